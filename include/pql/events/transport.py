"""What every export client shares: its errors and how long to wait before trying again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)


def shown_url(url: str, secret: bool = False) -> str:
    """A URL as messages show it: no query (keys travel there), and for a secret URL no path."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}" + ("/…" if secret else u.path)


class ExportError(Exception):
    """The export could not be fetched; the message says why and what to do."""


class CredentialsError(ExportError):
    """The vendor rejected the credentials: retrying will not help."""


class IncompleteExport(ExportError):
    """The server cut the export short; the whole window must be fetched again."""


def backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait: the server's Retry-After when given, else exponential up to a minute."""
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), 300.0)
    return min(60.0, 2.0**attempt)


def transient(status: int) -> bool:
    """Rate limits and server errors: worth another try after a wait."""
    return status == 429 or status >= 500


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    attempts: int,
    sleep: Callable[[float], None] = time.sleep,
    retry_on: Callable[[int], bool] = transient,
    secret_url: bool = False,
    **kwargs,
) -> requests.Response:
    """One HTTP call, repeated with backoff on connection errors and on `retry_on` statuses.

    Returns the first answer not worth retrying, or the last one once attempts run out; the
    caller decides what every status means (and closes a streamed response). Messages show
    the URL without its query, and with `secret_url` (a Slack webhook: its path is the
    secret) only its scheme and host.
    """
    shown = shown_url(url, secret_url)
    for attempt in range(1, attempts + 1):
        try:
            resp = session.request(method, url, **kwargs)
        except requests.ConnectionError as e:
            if attempt == attempts:
                # requests repeats the path in its message (and the chained traceback).
                reason = str(e).replace(urlsplit(url).path, "/…") if secret_url else str(e)
                error = ExportError(f"cannot reach {shown}: {reason}")
                raise error from (None if secret_url else e)
            sleep(backoff(attempt, None))
            continue
        if not retry_on(resp.status_code) or attempt == attempts:
            return resp
        wait = backoff(attempt, resp.headers.get("Retry-After"))
        log.warning("%s answered %s; retrying in %.0fs", shown, resp.status_code, wait)
        resp.close()
        sleep(wait)
    raise ExportError("unreachable")
