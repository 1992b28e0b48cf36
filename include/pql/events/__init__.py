"""Product events: vendor exports in, canonical deduplicated Parquet out."""

from pql.http import HttpError, IncompleteDownload


class ExportError(HttpError):
    """The export could not be had (refused, failing, too many bad lines); the message says why
    and what to do."""


# An export that did not arrive whole: a download the one HTTP layer fetches again.
IncompleteExport = IncompleteDownload
