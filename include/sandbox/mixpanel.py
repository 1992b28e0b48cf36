"""Mixpanel emulator: Raw Event Export and Engage (profile query), plus the storage they serve.

Storage, owned by this module and written by the world generator through its helpers:

* Events: one gzip JSON-lines file per project day, ``event_file(state, day)``. Each line is
  exactly an export line ``{"event": ..., "properties": {...}}`` with ``properties.time`` in whole
  seconds. Modern projects store true UTC seconds; legacy projects (created before 2023) store
  local wall-clock seconds. Either way a line belongs to the calendar day of its stored ``time``
  value (``project_day``), so ``DayWriter`` can file lines without knowing the timezone.
* Profiles: SQLite table ``mixpanel_profiles(distinct_id, properties)``, see ``upsert_profiles``.

Endpoints (shapes follow Mixpanel's docs and observed behaviour):

* ``GET /api/2.0/export``: Basic auth with a service account (``project_id`` required) or the
  legacy project secret; dates are project days, ``to_date`` may not be later than today in the
  project timezone (setting ``mixpanel_project_timezone``, default UTC; set it only for a legacy
  project, since a modern project's dates are UTC days whatever its display timezone); JSON-lines
  body streamed in chunks, gzip-compressed when asked for and larger than 1400 bytes.
* ``GET|POST /api/2.0/engage`` and ``/api/query/engage``: paged profile query with
  ``session_id``/``page``/``total`` semantics that mixpanel-utils relies on.

Fault injection (``state.queue_fault``): target ``"mixpanel"`` affects the export and
``"mixpanel_engage"`` affects Engage. A queued 4xx/5xx status is answered instead of the request;
the export also understands ``TRUNCATE_FAULT`` (299), see ``_terminated_early``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gzip
import hmac
import json
import re
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from http import HTTPStatus
from itertools import chain, islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from sandbox.partitioned import PartitionedWriter
from sandbox.state import SandboxState

EXPORT_PATH = "/api/2.0/export"
ENGAGE_PATHS = ("/api/2.0/engage", "/api/query/engage")

#: Queued on target "mixpanel": serve the export but cut it short with a `terminated early` line.
TRUNCATE_FAULT = 299
TERMINATED_EARLY = b"terminated early\n"

MAX_EXPORT_LIMIT = 100_000
GZIP_MIN_BYTES = 1400  # Mixpanel leaves smaller bodies uncompressed even when gzip was asked for
CHUNK_BYTES = 64 * 1024
ENGAGE_PAGE_SIZE = 1000  # Engage's default and largest page
UNSUPPORTED_ENGAGE_PARAMS = ("filter_by_cohort", "behaviors", "data_group_id")

_EPOCH = date(1970, 1, 1)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT_RE = re.compile(r"-?\d+")


class MixpanelError(Exception):
    """An error answer; each API renders it in its own body shape (see `_error_response`)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------------------------
# Event storage
# --------------------------------------------------------------------------------------------


def event_file(state: SandboxState, day: date) -> Path:
    """The gzip JSON-lines file holding one project day of events."""
    project_id = state.credentials["mixpanel"]["project_id"]
    return state.events_dir / "mixpanel" / str(project_id) / f"{day:%Y-%m-%d}.jsonl.gz"


def project_day(stored_time: float) -> date:
    """The project day of a stored `time` value (UTC seconds, or local wall-clock seconds)."""
    return _epoch_day(int(stored_time // 86400))


@functools.lru_cache(maxsize=8192)
def _epoch_day(days: int) -> date:
    return _EPOCH + timedelta(days=days)


# One shared encoder: json.dumps with options builds a new encoder per call (hot in the writer).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class DayWriter(PartitionedWriter):
    """Export lines into per-project-day gzip files (see `PartitionedWriter`)."""

    def __init__(self, state: SandboxState, *, append: bool = False,
                 buffer_bytes: int = 32 * 2**20, day_flush_bytes: int = 2**20,
                 compresslevel: int = 5):  # fmt: skip
        super().__init__(
            lambda day: event_file(state, day),
            append=append,
            buffer_bytes=buffer_bytes,
            flush_bytes=day_flush_bytes,
            compresslevel=compresslevel,
        )

    def write(self, line: dict, day: date | None = None) -> None:
        """Add one export line; its day defaults to the day of `line["properties"]["time"]`."""
        if day is None:
            day = project_day(line["properties"]["time"])
        self.write_raw(day, _dumps(line))


def write_events(state: SandboxState, lines: Iterable[dict], *, append: bool = False) -> dict:
    """Write export lines into their day files (see `DayWriter`); returns lines per day."""
    with DayWriter(state, append=append) as writer:
        for line in lines:
            writer.write(line)
    return writer.counts


def _day_lines(state: SandboxState, day: date) -> Iterator[bytes]:
    """The stored lines of one project day, each ending in a newline; none if no file."""
    path = event_file(state, day)
    if not path.exists():
        return
    with gzip.open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                yield raw if raw.endswith(b"\n") else raw + b"\n"


# --------------------------------------------------------------------------------------------
# Profile storage
# --------------------------------------------------------------------------------------------


def _ensure_profiles_table(conn) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mixpanel_profiles"
        " (distinct_id TEXT PRIMARY KEY, properties JSON NOT NULL)"
    )


def upsert_profiles(state: SandboxState, profiles: Iterable[tuple[str, dict]]) -> int:
    """Insert or replace profiles as (distinct_id, properties); returns how many were written."""
    count = 0

    def rows():
        nonlocal count
        for distinct_id, properties in profiles:
            count += 1
            yield str(distinct_id), _dumps(properties)

    with state.db() as conn:
        _ensure_profiles_table(conn)
        conn.executemany(
            "INSERT INTO mixpanel_profiles (distinct_id, properties) VALUES (?, ?)"
            " ON CONFLICT (distinct_id) DO UPDATE SET properties = excluded.properties",
            rows(),
        )
    return count


# --------------------------------------------------------------------------------------------
# Segmentation expressions (`where`)
# --------------------------------------------------------------------------------------------

Predicate = Callable[[dict], Any]
_UNDEFINED = object()  # a missing property; comparisons with it are false, as in Mixpanel

_TOKEN_RE = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<op>==|!=|>=|<=|[<>()\[\]])"
    r"|(?P<name>[A-Za-z_]\w*))"
)


class WhereError(ValueError):
    """A `where` expression outside the supported subset."""


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _to_number(value: Any) -> Any:
    if _kind(value) == "number":
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return _UNDEFINED
    return _UNDEFINED


def _to_string(value: Any) -> Any:
    if value is _UNDEFINED or value is None:
        return _UNDEFINED
    return _dumps(value) if isinstance(value, bool) else str(value)


def _truthy(value: Any) -> bool:
    return value is not _UNDEFINED and bool(value)


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "defined": lambda v: v is not _UNDEFINED,
    "number": _to_number,
    "string": _to_string,
    "boolean": _truthy,
}

_ORDERINGS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def _compare(op: str, a: Any, b: Any) -> bool:
    """Mixpanel comparison: mismatched types or missing values are undefined, i.e. false."""
    if op == "in":
        if isinstance(a, str) and isinstance(b, str):
            return a in b  # substring match
        return isinstance(b, list) and a in b
    kind = _kind(a)
    if kind is None or kind != _kind(b):
        return False
    if op in ("==", "!="):
        return (a == b) == (op == "==")
    return kind != "boolean" and _ORDERINGS[op](a, b)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise WhereError(f"unexpected input at position {pos}: {text[pos : pos + 20]!r}")
        pos, kind, value = match.end(), match.lastgroup, match.group(match.lastgroup)
        if kind == "string":
            tokens.append(("literal", json.loads(value)))
        elif kind == "number":
            tokens.append(
                ("literal", float(value) if any(c in value for c in ".eE") else int(value))
            )
        elif kind == "name" and value in ("true", "false"):
            tokens.append(("literal", value == "true"))
        else:
            tokens.append((kind, value))
    return tokens


class _WhereParser:
    """Recursive descent over: or > and > not > comparison > operand."""

    def __init__(self, text: str):
        self.tokens, self.i = _tokenize(text), 0

    def parse(self) -> Predicate:
        if not self.tokens:
            raise WhereError("empty expression")
        expr = self._or()
        if self.i < len(self.tokens):
            raise WhereError(f"unexpected {self.tokens[self.i][1]!r}")
        return lambda props: _truthy(expr(props))

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _accept(self, *values: str) -> str | None:
        token = self._peek()
        if token and token[0] in ("op", "name") and token[1] in values:
            self.i += 1
            return token[1]
        return None

    def _expect(self, value: str) -> None:
        if not self._accept(value):
            found = self._peek()
            raise WhereError(f"expected {value!r}, found {found[1] if found else 'end'!r}")

    def _or(self) -> Predicate:
        left = self._and()
        while self._accept("or"):
            left = (lambda a, b: lambda p: _truthy(a(p)) or _truthy(b(p)))(left, self._and())
        return left

    def _and(self) -> Predicate:
        left = self._not()
        while self._accept("and"):
            left = (lambda a, b: lambda p: _truthy(a(p)) and _truthy(b(p)))(left, self._not())
        return left

    def _not(self) -> Predicate:
        if self._accept("not"):
            inner = self._not()
            return lambda p: not _truthy(inner(p))
        return self._comparison()

    def _comparison(self) -> Predicate:
        left = self._operand()
        op = self._accept("==", "!=", ">=", "<=", ">", "<", "in")
        if op is None:
            return left
        right = self._operand()
        return lambda p: _compare(op, left(p), right(p))

    def _operand(self) -> Predicate:
        token = self._peek()
        if token is None:
            raise WhereError("unexpected end of expression")
        self.i += 1
        kind, value = token
        if kind == "literal":
            return lambda p: value
        if value == "(":
            inner = self._or()
            self._expect(")")
            return inner
        if value == "properties":
            return self._property()
        if value in _FUNCTIONS:
            func = _FUNCTIONS[value]
            self._expect("(")
            arg = self._or()
            self._expect(")")
            return lambda p: func(arg(p))
        raise WhereError(f"unsupported {value!r}")

    def _property(self) -> Predicate:
        self._expect("[")
        token = self._peek()
        if token is None or token[0] != "literal" or not isinstance(token[1], str):
            raise WhereError("expected a property name string after properties[")
        self.i += 1
        self._expect("]")
        name = token[1]
        return lambda p: p.get(name, _UNDEFINED)


def compile_where(text: str) -> Predicate:
    """Compile a segmentation expression into a predicate over a properties dict.

    Supported: `properties["name"]`, string/number/boolean literals, `== != > >= < <= in`,
    `and or not`, parentheses and `defined() number() string() boolean()`.
    """
    return _WhereParser(text).parse()


# --------------------------------------------------------------------------------------------
# Requests: auth, rate limits, faults, errors
# --------------------------------------------------------------------------------------------


def _request_ref(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _error_response(request: Request, api: str, exc: MixpanelError) -> JSONResponse:
    """Export errors are {"request", "error"}; Engage errors {"error", "status": "error"}.

    Rate limiting uses the query family's {"request", "error"} shape on both; a failed login is a
    bare {"error"} on the export.
    """
    if exc.status == 429 or (api == "export" and exc.status != 401):
        body = {"request": _request_ref(request), "error": exc.message}
    elif api == "export":
        body = {"error": exc.message}
    else:
        body = {"error": exc.message, "status": "error"}
    headers = {"WWW-Authenticate": 'Basic realm="Mixpanel"'} if exc.status == 401 else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from a Basic header; the plain-text form is accepted as Mixpanel does."""
    if not header or header[:6].lower() != "basic ":
        return None
    value = header[6:].strip()
    with contextlib.suppress(binascii.Error, UnicodeDecodeError):  # else plain "user:secret"
        value = base64.b64decode(value, validate=True).decode("utf-8")
    user, sep, password = value.partition(":")
    return (user, password) if sep else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _authenticate(state: SandboxState, request: Request, params: dict) -> None:
    """Service account (with this project's `project_id`) or legacy project secret."""
    creds = state.credentials["mixpanel"]
    pair = _basic_credentials(request.headers.get("authorization"))
    if pair is None:
        raise MixpanelError(401, "Unable to authenticate request")
    user, password = pair
    if _same(user, creds["username"]) and _same(password, creds["secret"]):
        _check_project_id(params.get("project_id"), creds["project_id"])
    # The legacy secret belongs to one project, so it needs (and checks) no project_id.
    elif not (_same(user, creds["secret"]) and password == ""):
        raise MixpanelError(401, "Unable to authenticate request")


def _check_project_id(raw: str | None, project_id: int) -> None:
    if not raw:
        raise MixpanelError(400, "project_id is required for service account authentication")
    if not raw.isdigit():
        raise MixpanelError(400, f"project_id must be an integer, got {raw!r}")
    if int(raw) != int(project_id):
        raise MixpanelError(403, f"service account has no access to project_id: {raw}")


def _rate_limited(state: SandboxState, limit: int, window: str) -> MixpanelError:
    project_id = state.credentials["mixpanel"]["project_id"]
    return MixpanelError(
        429,
        f"Query rate limit exceeded for project_id: {project_id}. "
        f"{limit + 1}/{limit} queries running in the last {window}. Please retry later.",
    )


_WINDOWS = {
    "second": (1.0, "mixpanel_queries_per_second"),
    "hour": (3600.0, "mixpanel_queries_per_hour"),
}


def _enforce_rate_limits(state: SandboxState, api: str, windows: Iterable[str]) -> None:
    """Count this query against the per-project windows; the per-second one is checked first."""
    now = time.monotonic()
    for window in windows:
        seconds, setting = _WINDOWS[window]
        limit = int(state.settings[setting])
        if not state.limiter(f"mixpanel_{api}_{window}", limit, seconds).hit(now):
            raise _rate_limited(state, limit, window)


def _raise_for_fault(state: SandboxState, status: int | None) -> None:
    """Answer a queued error status instead of the request (other statuses are ignored)."""
    if status is None or status < 400:
        return
    if status == 429:
        raise _rate_limited(state, int(state.settings["mixpanel_queries_per_hour"]), "hour")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Server error" if status >= 500 else "Request failed"
    raise MixpanelError(status, phrase)


def _project_today(state: SandboxState) -> date:
    return datetime.now(ZoneInfo(state.settings["mixpanel_project_timezone"])).date()


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportQuery:
    """A validated export request."""

    from_date: date
    to_date: date
    events: frozenset[str] | None = None
    where: Predicate | None = None
    limit: int | None = None
    time_in_ms: bool = False

    @property
    def days(self) -> Iterator[date]:
        for offset in range((self.to_date - self.from_date).days + 1):
            yield self.from_date + timedelta(days=offset)

    @property
    def rewrites_lines(self) -> bool:
        return bool(self.events is not None or self.where or self.time_in_ms)


def _parse_date(params: dict, name: str) -> date:
    raw = params.get(name)
    if not raw:
        raise MixpanelError(400, f"{name} is a required parameter")
    try:
        if not _DATE_RE.fullmatch(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise MixpanelError(
            400, f"{name} must be a date in yyyy-mm-dd format, got {raw!r}"
        ) from None


def _parse_json_strings(params: dict, name: str) -> list[str] | None:
    """A JSON array of strings, as Mixpanel takes `event`, `distinct_ids`, `output_properties`."""
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MixpanelError(400, f"{name} must be a JSON array of strings, got {raw!r}")
    return value


def _parse_int(params: dict, name: str, low: int, high: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not _INT_RE.fullmatch(raw) or int(raw) < low or (high is not None and int(raw) > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise MixpanelError(400, f"{name} must be an integer {bound}, got {raw!r}")
    return int(raw)


def _parse_bool(params: dict, name: str) -> bool:
    raw = params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise MixpanelError(400, f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1")


def _parse_where(params: dict) -> Predicate | None:
    raw = params.get("where")
    if not raw:
        return None
    try:
        return compile_where(raw)
    except WhereError as exc:
        raise MixpanelError(400, f"invalid where expression {raw!r}: {exc}") from None


def parse_export_query(params: dict, today: date) -> ExportQuery:
    """Validate export parameters; `today` is the current day in the project timezone."""
    from_date, to_date = _parse_date(params, "from_date"), _parse_date(params, "to_date")
    if from_date > to_date:
        raise MixpanelError(400, "from_date cannot be later than to_date")
    if to_date > today:
        raise MixpanelError(400, "to_date cannot be later than today")
    events = _parse_json_strings(params, "event")
    return ExportQuery(
        from_date=from_date,
        to_date=to_date,
        events=frozenset(events) if events is not None else None,
        where=_parse_where(params),
        limit=_parse_int(params, "limit", 1, MAX_EXPORT_LIMIT),
        time_in_ms=_parse_bool(params, "time_in_ms"),
    )


def _select_line(raw: bytes, query: ExportQuery) -> bytes | None:
    """The line as exported, or None when filtered out.

    A stored line that is not JSON (a deliberately split record) passes through verbatim,
    because the real service breaks lines after it has selected them.
    """
    if not query.rewrites_lines:
        return raw
    try:
        line = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(line, dict):
        return raw
    properties = line.get("properties") or {}
    if query.events is not None and line.get("event") not in query.events:
        return None
    if query.where is not None and not query.where(properties):
        return None
    if query.time_in_ms and _kind(properties.get("time")) == "number":
        properties["time"] = int(round(properties["time"] * 1000))
    return (_dumps(line) + "\n").encode("utf-8")


def export_lines(state: SandboxState, query: ExportQuery) -> Iterator[bytes]:
    """The export's lines, day by day, one file open at a time."""
    lines = (
        selected
        for day in query.days
        for raw in _day_lines(state, day)
        if (selected := _select_line(raw, query)) is not None
    )
    return islice(lines, query.limit) if query.limit else lines


def _terminated_early(state: SandboxState, query: ExportQuery) -> Iterator[bytes]:
    """About half of the export followed by the literal `terminated early` line.

    Mimics the real service cutting a long export short (status stays 200). The first pass only
    counts lines, so memory stays flat.
    """
    total = sum(1 for _ in export_lines(state, query))
    return chain(islice(export_lines(state, query), total // 2), [TERMINATED_EARLY])


def _chunks(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Batch lines into chunks of about CHUNK_BYTES, so a large export is not one write per line."""
    batch, size = [], 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def _gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    for chunk in chunks:
        if out := compressor.compress(chunk):
            yield out
    yield compressor.flush()


def _accepts_gzip(request: Request) -> bool:
    for coding in request.headers.get("accept-encoding", "").split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _stream(lines: Iterable[bytes], gzip_ok: bool) -> Response:
    """A chunked text/plain body, gzip-compressed when allowed and larger than GZIP_MIN_BYTES.

    Headers go out before the body, so the first chunks are read ahead to learn the size.
    """
    chunks = _chunks(lines)
    head, size = [], 0
    if gzip_ok:
        for chunk in chunks:
            head.append(chunk)
            size += len(chunk)
            if size > GZIP_MIN_BYTES:
                break
    body = chain(head, chunks)
    headers = {"Vary": "Accept-Encoding"}
    if gzip_ok and size > GZIP_MIN_BYTES:
        headers["Content-Encoding"] = "gzip"
        body = _gzipped(body)
    return StreamingResponse(body, media_type="text/plain", headers=headers)


# --------------------------------------------------------------------------------------------
# Engage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngageQuery:
    """A validated Engage request."""

    page: int = 0
    page_size: int = ENGAGE_PAGE_SIZE
    session_id: str | None = None
    where: Predicate | None = None
    distinct_ids: tuple[str, ...] | None = None
    output_properties: tuple[str, ...] | None = None


def parse_engage_query(params: dict) -> EngageQuery:
    """Validate Engage parameters; options the sandbox cannot honour are refused, not ignored."""
    for name in UNSUPPORTED_ENGAGE_PARAMS:
        if params.get(name):
            raise MixpanelError(400, f"{name} is not supported by the sandbox")
    ids = _parse_json_strings(params, "distinct_ids")
    if params.get("distinct_id"):
        ids = [*(ids or []), params["distinct_id"]]
    outputs = _parse_json_strings(params, "output_properties")
    page_size = _parse_int(params, "page_size", 1) or ENGAGE_PAGE_SIZE
    return EngageQuery(
        page=_parse_int(params, "page", 0) or 0,
        page_size=min(page_size, ENGAGE_PAGE_SIZE),  # larger pages are served as the maximum
        session_id=params.get("session_id") or None,
        where=_parse_where(params),
        distinct_ids=tuple(ids) if ids is not None else None,
        output_properties=tuple(outputs) if outputs is not None else None,
    )


class EngageSessions:
    """Snapshots of matching distinct_ids by session_id, so a session's pages stay consistent."""

    def __init__(self, capacity: int = 256):
        self._snapshots: OrderedDict[str, list[str]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def create(self, distinct_ids: list[str]) -> str:
        session_id = f"{int(time.time())}-{secrets.token_hex(3).upper()}"
        with self._lock:
            self._snapshots[session_id] = distinct_ids
            while len(self._snapshots) > self._capacity:
                self._snapshots.popitem(last=False)
        return session_id

    def get(self, session_id: str) -> list[str] | None:
        with self._lock:
            return self._snapshots.get(session_id)


def _matching_profile_ids(state: SandboxState, query: EngageQuery) -> list[str]:
    sql, args = "SELECT distinct_id, properties FROM mixpanel_profiles", []
    if query.distinct_ids is not None:
        sql += f" WHERE distinct_id IN ({','.join('?' * len(query.distinct_ids))})"
        args = list(query.distinct_ids)
    with state.db() as conn:
        _ensure_profiles_table(conn)
        rows = conn.execute(sql + " ORDER BY distinct_id", args)
        if query.where is None:
            return [row["distinct_id"] for row in rows]
        return [row["distinct_id"] for row in rows if query.where(json.loads(row["properties"]))]


def _load_profiles(state: SandboxState, ids: list[str], outputs: tuple[str, ...] | None) -> list:
    if not ids:
        return []
    with state.db() as conn:
        rows = conn.execute(
            "SELECT distinct_id, properties FROM mixpanel_profiles"
            f" WHERE distinct_id IN ({','.join('?' * len(ids))})",
            ids,
        )
        found = {row["distinct_id"]: json.loads(row["properties"]) for row in rows}
    results = []
    for distinct_id in ids:  # snapshot order; profiles deleted since the snapshot drop out
        properties = found.get(distinct_id)
        if properties is None:
            continue
        if outputs is not None:
            properties = {k: v for k, v in properties.items() if k in outputs}
        results.append({"$distinct_id": distinct_id, "$properties": properties})
    return results


def engage_page(state: SandboxState, sessions: EngageSessions, query: EngageQuery) -> dict:
    """One page of an Engage query; `total` counts matches across all pages."""
    ids = sessions.get(query.session_id) if query.session_id else None
    session_id = query.session_id
    if ids is None and query.page > 0:
        if not query.session_id:
            raise MixpanelError(400, "session_id is required when page is greater than 0")
        raise MixpanelError(400, f"session_id {query.session_id!r} is unknown or expired")
    if ids is None:
        ids = _matching_profile_ids(state, query)
        session_id = sessions.create(ids)
    start = query.page * query.page_size
    return {
        "page": query.page,
        "page_size": query.page_size,
        "session_id": session_id,
        "status": "ok",
        "total": len(ids),
        "results": _load_profiles(
            state, ids[start : start + query.page_size], query.output_properties
        ),
    }


async def _request_params(request: Request) -> dict:
    """Query parameters merged with a form-encoded body (Engage accepts either)."""
    params = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and content_type.startswith("application/x-www-form-urlencoded"):
        body = (await request.body()).decode("utf-8")
        params.update(parse_qsl(body, keep_blank_values=True))
    return params


# --------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------


def router(state: SandboxState) -> APIRouter:
    """The Mixpanel routes, bound to `state`."""
    api = APIRouter()
    sessions = EngageSessions()

    @api.get(EXPORT_PATH)
    def export(request: Request) -> Response:
        # A sync endpoint: FastAPI runs it, and the body iterator, in its thread pool.
        fault = state.take_fault("mixpanel")
        params = dict(request.query_params)
        try:
            _raise_for_fault(state, fault)
            _authenticate(state, request, params)
            query = parse_export_query(params, _project_today(state))
            _enforce_rate_limits(state, "export", ("second", "hour"))
        except MixpanelError as exc:
            return _error_response(request, "export", exc)
        if fault == TRUNCATE_FAULT:
            lines = _terminated_early(state, query)
        else:
            lines = export_lines(state, query)
        return _stream(lines, _accepts_gzip(request))

    async def engage(request: Request) -> Response:
        params = await _request_params(request)
        return await run_in_threadpool(_engage, request, params)

    def _engage(request: Request, params: dict) -> Response:
        try:
            _raise_for_fault(state, state.take_fault("mixpanel_engage"))
            _authenticate(state, request, params)
            query = parse_engage_query(params)
            # The Query API documents an hourly limit only (no per-second one).
            _enforce_rate_limits(state, "engage", ("hour",))
            return JSONResponse(engage_page(state, sessions, query))
        except MixpanelError as exc:
            return _error_response(request, "engage", exc)

    for path in ENGAGE_PATHS:
        api.add_api_route(path, engage, methods=["GET", "POST"])
    return api
