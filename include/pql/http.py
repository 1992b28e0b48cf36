"""The one HTTP layer: errors, waits before trying again, budgets of calls, and a download that
is data only when the whole body arrived (the rules: docs/exports.md).

Every vendor client retries through here: exports and APIs with `send` and `download`, the SDKs
(HubSpot's urllib3 retry) with `sdk_retry`, Salesforce's lock retries with `doubling`; calls
are paced by `Budget`s. Errors say why and what to do, named for what failed.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests
import urllib3
from isal import isal_zlib
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

RETRIED_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER_S = 300.0  # a Retry-After we follow; a longer one (a daily limit) fails instead
SDK_MAX_RETRY_AFTER_S = 60.0  # inside an SDK call, a worker slot should not wait longer


def shown_url(url: str, secret: bool = False) -> str:
    """A URL as messages show it: no query (keys travel there), and for a secret URL no path."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}" + ("/…" if secret else u.path)


def session(conn=None, *, auth=None, bearer: str | None = None) -> requests.Session:
    """A requests session for a connection (pql.connections.Conn): Basic `auth` or a `bearer`
    token, and the connection's optional `ca_bundle` extra as the CA file TLS is verified with
    (for a proxy or a sandbox with its own certificate authority)."""
    s = requests.Session()
    if auth is not None:
        s.auth = auth
    if bearer is not None:
        s.headers["Authorization"] = f"Bearer {bearer}"
    ca = (conn.extra.get("ca_bundle") if conn is not None else None) or None
    if ca:
        s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        s.verify = ca
    return s


class HttpError(Exception):
    """A call or download failed after its retries; the message says why and what to do."""


class CredentialsError(HttpError):
    """The vendor rejected the credentials: retrying will not help."""


class IncompleteDownload(HttpError):
    """A body did not arrive whole (cut, reset, short of its length, a broken gzip or zip, or
    a vendor's own "cut short" marker): never data; the whole window is fetched again."""


class Budget:
    """`acquire()` returns once a call fits in every (limit, window) pair, sleeping if needed.

    Mixpanel allows 60 export queries an hour and 3 a second per project; HubSpot 100 calls in
    any 10 seconds: spending a budget evenly avoids the errors that come after it is spent.
    """

    def __init__(self, limits: list[tuple[int, float]], *,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 shared: Path | None = None):  # fmt: skip
        self.limits = limits
        # A budget shared between processes (`shared`: a file of the calls' times) counts on
        # the wall clock, the one clock they have in common.
        self.clock = clock or (time.time if shared else time.monotonic)
        self.sleep, self.shared = sleep, shared
        self.calls: deque[float] = deque()
        self._lock = threading.Lock()  # threads of one task share the budget

    def acquire(self, max_wait: float | None = None) -> float:
        """Wait for a free slot; returns the seconds waited. With `max_wait`, raises
        BudgetSpent instead of waiting longer than that."""
        waited = 0.0
        while True:
            with self._lock, self._calls_of_all():
                wait = self._try(self.clock())
            if wait <= 0:
                return waited
            if max_wait is not None and waited + wait > max_wait:
                raise BudgetSpent(wait)
            self.sleep(wait)
            waited += wait

    @contextmanager
    def _calls_of_all(self) -> Iterator[None]:
        """With `shared`: the calls every process made, under a lock, saved back after."""
        if self.shared is None:
            yield
            return
        self.shared.parent.mkdir(parents=True, exist_ok=True)
        with open(self.shared, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            self.calls = deque(float(t) for t in text.split()) if text.strip() else deque()
            yield
            f.seek(0)
            f.truncate()
            f.write("\n".join(f"{t:.3f}" for t in self.calls))

    def _try(self, now: float) -> float:
        """Take a slot at `now` (returns 0) or say how long until one frees up."""
        longest = max(w for _, w in self.limits)
        while self.calls and now - self.calls[0] >= longest:
            self.calls.popleft()
        wait = 0.0
        for limit, window in self.limits:
            recent = [t for t in self.calls if now - t < window]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + window - now)
        if wait <= 0:
            self.calls.append(now)
        return wait


class BudgetSpent(Exception):
    """The budget has no slot within the wait a caller allows."""

    def __init__(self, wait: float):
        super().__init__(f"the call budget frees a slot in {wait:.0f} s")
        self.wait = wait


def doubling(attempt: int, first: float, cap: float = 60.0) -> float:
    """`first` seconds before the second attempt, doubling after each, at most `cap`."""
    return min(cap, first * 2 ** (attempt - 1))


class _CappedRetry(Retry):
    """urllib3 Retry that never sleeps longer than SDK_MAX_RETRY_AFTER_S on a Retry-After.

    A DAILY-limit 429 can ask to wait until midnight: better to fail the task with the vendor's
    message than to hold a worker slot for hours.
    """

    def get_retry_after(self, response):
        after = super().get_retry_after(response)
        return None if after is None else min(after, SDK_MAX_RETRY_AFTER_S)


def sdk_retry(total: int = 8, backoff_factor: float = 0.5) -> Retry:
    """The retry an SDK built on urllib3 is given: 429 and 5xx, every method (batch POSTs
    included), Retry-After honoured up to a minute, the last answer returned, not raised."""
    return _CappedRetry(
        total=total,
        backoff_factor=backoff_factor,
        status_forcelist=RETRIED_STATUSES,
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait: the server's Retry-After when given, else exponential up to a minute."""
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), MAX_RETRY_AFTER_S)
    return doubling(attempt, 2.0)


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
    expect_json: bool = False,
    **kwargs,
) -> requests.Response:
    """One HTTP call, repeated with backoff on connection errors and on `retry_on` statuses.

    Returns the first answer not worth retrying, or the last one once attempts run out; the
    caller decides what every status means (and closes a streamed response). A body cut in
    transit is a connection error; with `expect_json`, so is a 2xx body that is not whole JSON
    (a body without a length ends with the connection, wherever that was cut). Messages show
    the URL without its query, and with `secret_url` (a Slack webhook: its path is the
    secret) only its scheme and host.
    """
    shown = shown_url(url, secret_url)
    for attempt in range(1, attempts + 1):
        try:
            resp = session.request(method, url, **kwargs)
            if expect_json and resp.ok:
                try:
                    resp.json()
                except ValueError:
                    raise requests.ConnectionError("the answer is not whole JSON") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            if attempt == attempts:
                # requests repeats the path in its message (and the chained traceback).
                reason = str(e).replace(urlsplit(url).path, "/…") if secret_url else str(e)
                error = HttpError(f"cannot reach {shown}: {reason}")
                raise error from (None if secret_url else e)
            sleep(backoff(attempt, None))
            continue
        if not retry_on(resp.status_code) or attempt == attempts:
            return resp
        wait = backoff(attempt, resp.headers.get("Retry-After"))
        log.warning("%s answered %s; retrying in %.0fs", shown, resp.status_code, wait)
        resp.close()
        sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Downloads: a body is data only once it is known to be whole.


class BodyCheck(Protocol):
    """Watches a body as it streams in and says, at its end, whether it arrived whole."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self, path: Path) -> None:
        """Raise IncompleteDownload if the body saved at `path` is not whole."""


@dataclass
class Download:
    """What a download ended with. `text` is the start of a non-200 body (for messages);
    `faults` says why each earlier attempt was thrown away."""

    status: int
    headers: Mapping[str, str]
    text: str = ""
    size: int = 0
    attempts: int = 1
    faults: list[str] = field(default_factory=list)

    def record(self, window: str) -> dict:
        """The manifest's account of this fetch."""
        return {"window": window, "attempts": self.attempts, "faults": self.faults}


# What a body cut after its headers raises out of the stream, whatever the framing.
_CUT = (urllib3.exceptions.HTTPError, requests.RequestException, OSError)


def download(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    window: str,
    attempts: int,
    check: Callable[[Mapping[str, str]], BodyCheck] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    retry_on: Callable[[int], bool] = transient,
    budget: Budget | None = None,
    **kwargs,
) -> Download:
    """GET `url` and stream a 200 body into `dest` exactly as received (no decoding).

    Connection errors, `retry_on` statuses and bodies that did not arrive whole are all tried
    again with backoff, up to `attempts` in all. A body is whole when its stream ended cleanly,
    it is as long as its Content-Length says, and `check` (built from the response headers:
    gzip complete, zip readable, ...) finds nothing missing. After the last attempt a cut body
    raises IncompleteDownload naming `window`; `dest` then does not exist. Any other final status
    is returned (body not saved) for the caller to interpret. Every attempt, the retries
    included, first takes a slot of `budget` (a vendor's queries per hour).
    """
    shown = shown_url(url)
    faults: list[str] = []
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        if budget and (waited := budget.acquire()):
            log.info("waited %.1fs for the export query budget", waited)
        try:
            resp = session.request("GET", url, stream=True, **kwargs)
        except requests.ConnectionError as e:
            if last:
                raise HttpError(f"cannot reach {shown} for {window}: {e}") from e
            faults.append(f"cannot reach the server: {_short(e)}")
            sleep(backoff(attempt, None))
            continue
        with resp:
            status = resp.status_code
            if status != 200:
                if retry_on(status) and not last:
                    wait = backoff(attempt, resp.headers.get("Retry-After"))
                    log.warning("%s answered %s; retrying in %.0fs", shown, status, wait)
                    faults.append(f"answered {status}")
                    sleep(wait)
                    continue
                return Download(status, resp.headers, resp.text[:500], 0, attempt, faults)
            try:
                size = _save(resp, dest, check(resp.headers) if check else None)
            except IncompleteDownload as e:
                dest.unlink(missing_ok=True)
                faults.append(str(e))
                if last:
                    raise IncompleteDownload(
                        f"{window}: the download from {shown} did not arrive whole in "
                        f"{attempts} attempts ({'; '.join(faults)}). Nothing was written for "
                        "this window; run it again once the network or proxy is healthy."
                    ) from e
                wait = backoff(attempt, None)
                log.warning("%s: %s; fetching it again in %.0fs", window, e, wait)
                sleep(wait)
                continue
        if faults:
            log.info("%s arrived whole on attempt %s of %s", window, attempt, attempts)
        return Download(200, resp.headers, "", size, attempt, faults)
    raise AssertionError("unreachable")


def _save(resp: requests.Response, dest: Path, check: BodyCheck | None) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with open(dest, "wb") as f:
            for chunk in resp.raw.stream(1 << 20, decode_content=False):
                f.write(chunk)
                written += len(chunk)
                if check:
                    check.feed(chunk)
    except _CUT as e:
        raise IncompleteDownload(f"the body was cut after {written:,} bytes ({_short(e)})") from e
    expected = resp.headers.get("Content-Length", "")
    if expected.isdigit() and written != int(expected):
        raise IncompleteDownload(f"{written:,} of the {int(expected):,} bytes announced arrived")
    if check:
        check.finish(dest)
    return written


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "…"


class GzipCheck:
    """Inflates a gzip stream as it arrives: whole when every member ends with its checksum.

    `tail` keeps the last bytes of the inflated text (a vendor's trailing marker lives there).
    """

    TAIL = 256

    def __init__(self) -> None:
        self._d = isal_zlib.decompressobj(wbits=31)
        self.started = False
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        while chunk:
            if self._d.eof:  # another member follows (zero padding after the last is allowed)
                if not chunk.strip(b"\x00"):
                    return
                self._d = isal_zlib.decompressobj(wbits=31)
            self.started = True
            try:
                out = self._d.decompress(chunk)
            except isal_zlib.error as e:
                raise IncompleteDownload(f"the gzip stream is corrupt ({e})") from e
            if out:
                self.tail = (self.tail + out[-self.TAIL :])[-self.TAIL :]
            chunk = self._d.unused_data if self._d.eof else b""

    def finish(self, path: Path) -> None:
        if self.started and not self._d.eof:
            raise IncompleteDownload("the gzip stream ends before its last member does")
