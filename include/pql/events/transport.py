"""What every export client shares: its errors and how long to wait before trying again."""

from __future__ import annotations


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
