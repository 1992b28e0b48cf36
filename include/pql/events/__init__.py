"""Product events: vendor exports in, canonical deduplicated Parquet out."""

import requests

from pql import http
from pql.http import HttpError, IncompleteDownload


class ExportError(HttpError):
    """The export could not be had (refused, failing, too many bad lines); the message says why
    and what to do."""


# An export that did not arrive whole: a download the one HTTP layer fetches again.
IncompleteExport = IncompleteDownload


def session(conn) -> tuple[requests.Session, str | None]:
    """The export client for a connection (pql.connections.Conn): a session with Basic auth
    (Mixpanel service-account user and secret, or Amplitude API key and secret key) and the
    base URL to call (None: the vendor's own host for the source's residency)."""
    return http.session(conn, auth=(conn.login or "", conn.password or "")), conn.host
