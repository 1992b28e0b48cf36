"""Mixpanel emulator: Raw Event Export and Engage (profile query), plus the storage they serve.

Storage, owned by this module and written by the world generator through its helpers:

* Events: one gzip JSON-lines file per project day, ``event_file(state, day)``. Each line is
  exactly an export line ``{"event": ..., "properties": {...}}`` with ``properties.time`` in whole
  seconds. Modern projects store true UTC seconds; legacy projects (created before 2023) store
  local wall-clock seconds. Either way a line belongs to the calendar day of its stored ``time``
  value (``project_day``), so ``DayWriter`` can file lines without knowing the timezone. Every
  line carries ``properties.mp_processing_time_ms`` (true UTC milliseconds; the writers fill a
  missing one from ``time``), and each day has sidecars under ``.index/``: a catalog of the
  lines' processing times and an index ordered by them (see "Processing-time catalog and
  index"; ``write_events(..., index=True)`` or ``index_day`` build the index ahead).
* Profiles: SQLite table ``mixpanel_profiles(distinct_id, properties)``, see ``upsert_profiles``.

Endpoints (shapes follow Mixpanel's docs and observed behaviour):

* ``GET /api/2.0/export``: Basic auth with a service account (``project_id`` required) or the
  legacy project secret; dates are project days, ``to_date`` may not be later than today in the
  project timezone (setting ``mixpanel_project_timezone``, default UTC; set it only for a legacy
  project, since a modern project's dates are UTC days whatever its display timezone); JSON-lines
  body streamed in chunks, gzip-compressed when asked for and larger than 1400 bytes. "Today"
  and "now" are the sandbox clock's (``SandboxState.now``, setting ``clock_offset_s``): an event
  is exported only once that clock is ``mixpanel_export_delay_s`` past its processing time, and a
  ``where`` on ``properties["mp_processing_time_ms"]`` is served from the day's index
  (docs/mixpanel.md §12).
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
import math
import os
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
from typing import Any, BinaryIO
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import numpy as np
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

PROCESSING_TIME = "mp_processing_time_ms"


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


def project_zone(state: SandboxState) -> ZoneInfo | None:
    """The zone a legacy project stores `time` in; None for UTC (every modern project)."""
    name = state.settings.get("mixpanel_project_timezone") or "UTC"
    return None if name in ("UTC", "Etc/UTC") else ZoneInfo(name)


def processing_time_ms(stored_time: float, zone: ZoneInfo | None = None) -> int:
    """`mp_processing_time_ms` for an event processed the instant it happened.

    Processing time is true UTC even in a legacy project, whose stored `time` counts local
    wall-clock seconds in `zone` (docs/mixpanel.md §5).
    """
    if zone is None:
        return round(stored_time * 1000)
    whole = math.floor(stored_time)
    local = datetime(1970, 1, 1) + timedelta(seconds=whole)
    return round((local.replace(tzinfo=zone).timestamp() + stored_time - whole) * 1000)


def with_processing_time(line: dict, zone: ZoneInfo | None = None) -> dict:
    """The line with `properties.mp_processing_time_ms` filled from its `time` when absent.

    A line that has one, or has no numeric `time`, is returned as it is; the caller's dict is
    never changed.
    """
    props = line.get("properties")
    if not isinstance(props, dict) or props.get(PROCESSING_TIME) is not None:
        return line
    stored = props.get("time")
    if _kind(stored) != "number" or not math.isfinite(stored):
        return line
    return {**line, "properties": {**props, PROCESSING_TIME: processing_time_ms(stored, zone)}}


class DayWriter(PartitionedWriter):
    """Export lines into per-project-day gzip files (see `PartitionedWriter`).

    `write` fills a missing `mp_processing_time_ms` (see `with_processing_time`, in the zone of
    setting `mixpanel_project_timezone`) and notes every line's processing time, so `close()`
    leaves each day with its catalog and exports never parse a whole day to learn them.
    """

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
        self._state = state
        self._zone = project_zone(state)
        self._codes: dict[date, list[float]] = {}
        # Codes of the lines an appended day already had; None when they are unknown.
        self._kept: dict[date, list[float] | None] = {}

    def write(self, line: dict, day: date | None = None) -> None:
        """Add one export line; its day defaults to the day of `line["properties"]["time"]`."""
        line = with_processing_time(line, self._zone)
        if day is None:
            day = project_day(line["properties"]["time"])
        super().write_raw(day, _dumps(line))
        self._codes.setdefault(day, []).append(_code(line))

    def write_raw(self, key: date, text: str) -> None:
        """Add verbatim text (e.g. a deliberately split record); no processing time is added."""
        super().write_raw(key, text)
        codes = self._codes.setdefault(key, [])
        codes.extend(_UNKNOWN for piece in text.split("\n") if piece.encode("utf-8").strip())

    def close(self) -> dict:
        counts = super().close()
        for day in counts:
            kept = self._kept.get(day, [])
            codes = None if kept is None else kept + self._codes.get(day, [])
            _publish_catalog(self._state, day, codes)
        self._codes.clear()
        self._kept.clear()
        return counts

    def abort(self) -> None:
        super().abort()
        self._codes.clear()
        self._kept.clear()

    def _new_temp(self, key: date) -> Path:
        if self._append and event_file(self._state, key).exists():
            catalog = _stored_catalog(self._state, key)
            self._kept[key] = None if catalog is None else catalog.codes.tolist()
        return super()._new_temp(key)


def write_events(
    state: SandboxState, lines: Iterable[dict], *, append: bool = False, index: bool = False
) -> dict:
    """Write export lines into their day files (see `DayWriter`); returns lines per day.

    With `index`, each written day's processing-time index is built at once (`index_day`), so
    not even the first processing-time export of a large day waits for it.
    """
    with DayWriter(state, append=append) as writer:
        for line in lines:
            writer.write(line)
    if index:
        for day in writer.counts:
            index_day(state, day)
    return writer.counts


# --------------------------------------------------------------------------------------------
# Processing-time catalog and index (docs/mixpanel.md §12)
#
# An export must hide events not yet processed, and the speed-to-lead extraction asks every few
# minutes for one day's lines processed since a watermark. Decompressing and parsing a whole day
# per call is far too slow for that, so each day gets two sidecars in `.index/`, both tied to
# the day file's signature (size, mtime, inode, last bytes) and rebuilt when it changes:
#
# * the catalog (`<day>.codes`): one float64 per stored line, in file order: its processing
#   time; -inf when the line is a JSON object without a numeric one (it matches no comparison
#   on it and is always visible); NaN when unknown (not JSON, a string, a number a float cannot
#   hold exactly), which the export then parses. DayWriter writes it; other files get it by one
#   full parse.
# * the index (`<day>.bypt`), built on the first processing-time query: the unknown lines, then
#   the others with a numeric processing time ordered by it, in zlib blocks of BLOCK_LINES, plus
#   the sorted times and each stored position's line number.
#
# The index only narrows what is read: every candidate goes through the same selection as the
# full scan, and lines come out in file order, so answers are exactly the full scan's.
# --------------------------------------------------------------------------------------------

_UNKNOWN = math.nan
_NO_PROCESSING_TIME = -math.inf
_EXACT_INT = 2**53  # larger integers may not survive float64
BLOCK_LINES = 256
_INDEX_VERSION = 1


def _code(line: Any) -> float:
    """A parsed line's catalog code (see the section comment)."""
    if not isinstance(line, dict):
        return _UNKNOWN
    props = line.get("properties") or {}
    if not isinstance(props, dict):
        return _UNKNOWN
    value = props.get(PROCESSING_TIME)
    if isinstance(value, str):
        return _UNKNOWN  # number() may read it
    if _kind(value) != "number":
        return _NO_PROCESSING_TIME
    if isinstance(value, int):
        return float(value) if abs(value) <= _EXACT_INT else _UNKNOWN
    return value if value == value and value != -math.inf else _UNKNOWN


def _processing_ms(line: Any) -> float | int | None:
    """A parsed line's numeric processing time, if it has one."""
    props = line.get("properties") if isinstance(line, dict) else None
    value = props.get(PROCESSING_TIME) if isinstance(props, dict) else None
    return value if _kind(value) == "number" else None


def _index_file(state: SandboxState, day: date, suffix: str) -> Path:
    path = event_file(state, day)
    return path.parent / ".index" / f"{day:%Y-%m-%d}.{suffix}"


def _signature(f: BinaryIO) -> list:
    """What identifies one version of a day file: size, mtime, inode and its last 16 bytes."""
    st = os.fstat(f.fileno())
    f.seek(max(0, st.st_size - 16))
    return [st.st_size, st.st_mtime_ns, st.st_ino, f.read(16).hex()]


def _lines_of(f: BinaryIO) -> Iterator[bytes]:
    """The stored lines of an open day file, each ending in a newline (blank lines skipped)."""
    f.seek(0)
    with gzip.GzipFile(fileobj=f, mode="rb") as gz:
        for raw in gz:
            if raw.strip():
                yield raw if raw.endswith(b"\n") else raw + b"\n"


def _parsed_code(raw: bytes) -> float:
    try:
        return _code(json.loads(raw))
    except (ValueError, RecursionError):
        return _UNKNOWN


def _write_sidecar(path: Path, header: dict, parts: Iterable[bytes]) -> None:
    """Header line, then binary parts; atomic, and private to this writer until it is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as out:
        out.write(json.dumps(header).encode() + b"\n")
        for part in parts:
            out.write(part)
    os.replace(tmp, path)


def _read_header(f: BinaryIO) -> dict | None:
    try:
        header = json.loads(f.readline())
    except ValueError:
        return None
    return header if isinstance(header, dict) and header.get("v") == _INDEX_VERSION else None


@dataclass
class _Catalog:
    signature: list
    codes: np.ndarray  # float64, one per stored line

    @functools.cached_property
    def latest(self) -> float:
        """The largest numeric processing time (-inf when none)."""
        known = self.codes[~np.isnan(self.codes)]
        return float(known.max()) if known.size else -math.inf

    @functools.cached_property
    def has_unknown(self) -> bool:
        return bool(np.isnan(self.codes).any())

    def hides_some(self, cutoff_ms: float) -> bool:
        """Whether a line may be too fresh for `cutoff_ms` (unknown lines may be)."""
        return self.has_unknown or self.latest > cutoff_ms


@dataclass
class _SortedIndex:
    signature: list
    path: Path
    unknown: int  # stored positions [0, unknown) hold the unknown lines
    times: np.ndarray  # float64: processing times of positions unknown.. in order
    line_numbers: np.ndarray  # int64: each stored position's line number in the day file
    offsets: np.ndarray  # int64: where each block starts (and the last ends) after data_start
    data_start: int

    def read(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """(line number, line) of stored positions start..stop-1."""
        if start >= stop:
            return
        with open(self.path, "rb") as f:
            for block in range(start // BLOCK_LINES, (stop - 1) // BLOCK_LINES + 1):
                f.seek(self.data_start + int(self.offsets[block]))
                size = int(self.offsets[block + 1] - self.offsets[block])
                lines = zlib.decompress(f.read(size)).split(b"\n")
                first = block * BLOCK_LINES
                for pos in range(max(start, first), min(stop, first + len(lines) - 1)):
                    yield int(self.line_numbers[pos]), lines[pos - first] + b"\n"


_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_CACHE_SIZE = 16
_CACHE_LOCK = threading.Lock()
_BUILD_LOCKS: dict[str, threading.Lock] = {}


def _cached(kind: str, path: Path, signature: list) -> Any:
    with _CACHE_LOCK:
        found = _CACHE.get((kind, str(path)))
        if found is not None and found.signature == signature:
            _CACHE.move_to_end((kind, str(path)))
            return found
    return None


def _remember(kind: str, path: Path, value: Any) -> Any:
    with _CACHE_LOCK:
        _CACHE[(kind, str(path))] = value
        _CACHE.move_to_end((kind, str(path)))
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _build_lock(path: Path) -> threading.Lock:
    with _CACHE_LOCK:
        return _BUILD_LOCKS.setdefault(str(path), threading.Lock())


def _load_catalog(path: Path, signature: list) -> _Catalog | None:
    """The stored catalog at `path` if it describes this version of the day file."""
    found = _cached("codes", path, signature)
    if found is not None:
        return found
    try:
        with open(path, "rb") as f:
            header = _read_header(f)
            if header is None or header.get("source") != signature:
                return None
            codes = np.frombuffer(f.read(), dtype="<f8")
    except FileNotFoundError:
        return None
    if codes.size != header.get("lines"):
        return None
    return _remember("codes", path, _Catalog(signature, codes))


def _save_catalog(path: Path, signature: list, codes: np.ndarray) -> _Catalog:
    codes = np.ascontiguousarray(codes, dtype="<f8")
    header = {"v": _INDEX_VERSION, "source": signature, "lines": int(codes.size)}
    _write_sidecar(path, header, [codes.tobytes()])
    return _remember("codes", path, _Catalog(signature, codes))


def _stored_catalog(state: SandboxState, day: date) -> _Catalog | None:
    """The day's catalog if it is current (nothing is built)."""
    try:
        with open(event_file(state, day), "rb") as f:
            signature = _signature(f)
    except FileNotFoundError:
        return None
    return _load_catalog(_index_file(state, day, "codes"), signature)


def _publish_catalog(state: SandboxState, day: date, codes: list[float] | None) -> None:
    """After a writer replaced a day: its catalog (None: unknown, built on first export)."""
    _index_file(state, day, "bypt").unlink(missing_ok=True)  # describes the old file
    path = _index_file(state, day, "codes")
    if codes is None:
        path.unlink(missing_ok=True)
        return
    with open(event_file(state, day), "rb") as f:
        signature = _signature(f)
    _save_catalog(path, signature, np.array(codes, dtype="<f8"))


def _catalog(state: SandboxState, day: date, f: BinaryIO, signature: list) -> _Catalog:
    """The catalog of the open day file `f`, parsing the whole day when none is current."""
    path = _index_file(state, day, "codes")
    found = _load_catalog(path, signature)
    if found is not None:
        return found
    with _build_lock(path):
        found = _load_catalog(path, signature)
        if found is None:
            codes = np.fromiter((_parsed_code(raw) for raw in _lines_of(f)), dtype="<f8")
            found = _save_catalog(path, signature, codes)
    return found


def _load_index(path: Path, signature: list) -> _SortedIndex | None:
    found = _cached("bypt", path, signature)
    if found is not None:
        return found
    try:
        with open(path, "rb") as f:
            header = _read_header(f)
            if header is None or header.get("source") != signature:
                return None
            numeric, unknown, blocks = header["numeric"], header["unknown"], header["blocks"]
            times = np.frombuffer(f.read(8 * numeric), dtype="<f8")
            line_numbers = np.frombuffer(f.read(8 * (unknown + numeric)), dtype="<i8")
            offsets = np.frombuffer(f.read(8 * (blocks + 1)), dtype="<i8")
            data_start = f.tell()
    except FileNotFoundError:
        return None
    index = _SortedIndex(signature, path, unknown, times, line_numbers, offsets, data_start)
    return _remember("bypt", path, index)


def _build_index(
    state: SandboxState, day: date, f: BinaryIO, signature: list, catalog: _Catalog
) -> _SortedIndex:
    """Write the day's index (see the section comment) from the open day file `f`."""
    f.seek(0)
    data = gzip.decompress(f.read())
    # The same lines as _lines_of: split on newlines, blank ones dropped.
    lines = [raw for raw in data.split(b"\n") if raw.strip()]
    del data
    codes = catalog.codes
    if codes.size != len(lines):  # cannot happen for a current catalog; never trust a wrong one
        codes = np.array([_parsed_code(raw) for raw in lines], dtype="<f8")
    unknown = np.flatnonzero(np.isnan(codes))
    numeric = np.flatnonzero(~np.isnan(codes) & (codes != _NO_PROCESSING_TIME))
    numeric = numeric[np.argsort(codes[numeric], kind="stable")]
    line_numbers = np.concatenate([unknown, numeric]).astype("<i8")
    times = np.ascontiguousarray(codes[numeric], dtype="<f8")
    order = line_numbers.tolist()
    blocks, offsets, size = [], [0], 0
    for start in range(0, len(order), BLOCK_LINES):
        chunk = b"".join(lines[i] + b"\n" for i in order[start : start + BLOCK_LINES])
        block = zlib.compress(chunk, 1)
        blocks.append(block)
        size += len(block)
        offsets.append(size)
    header = {
        "v": _INDEX_VERSION,
        "source": signature,
        "unknown": int(unknown.size),
        "numeric": int(numeric.size),
        "blocks": len(blocks),
    }
    offsets_array = np.array(offsets, dtype="<i8")
    path = _index_file(state, day, "bypt")
    _write_sidecar(
        path, header, [times.tobytes(), line_numbers.tobytes(), offsets_array.tobytes(), *blocks]
    )
    return _load_index(path, signature)


def _sorted_index(
    state: SandboxState, day: date, f: BinaryIO, signature: list, catalog: _Catalog
) -> _SortedIndex:
    path = _index_file(state, day, "bypt")
    found = _load_index(path, signature)
    if found is not None:
        return found
    with _build_lock(path):
        return _load_index(path, signature) or _build_index(state, day, f, signature, catalog)


def index_day(state: SandboxState, day: date) -> bool:
    """Build the day's catalog and processing-time index now rather than on the first export
    that needs them (a benchmark calls it after writing a large day); False if no such day."""
    try:
        with open(event_file(state, day), "rb") as f:
            signature = _signature(f)
            _sorted_index(state, day, f, signature, _catalog(state, day, f, signature))
    except FileNotFoundError:
        return False
    return True


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


Range = tuple[float, float]  # inclusive bounds on float64 values


def _widened(value: float | int) -> Range | None:
    """The float64 interval that surely holds `value` (a large int may fall between two)."""
    try:
        low = high = float(value)
    except OverflowError:
        return None
    if low > value:
        low = math.nextafter(low, -math.inf)
    if high < value:
        high = math.nextafter(high, math.inf)
    return low, high


def _comparison_range(op: str, left: Predicate, right: Predicate) -> Range | None:
    """What `properties["mp_processing_time_ms"] <op> <number>` (either way round) implies."""
    flipped = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "==": "=="}
    if getattr(right, "processing_time", False) and op in flipped:
        left, right, op = right, left, flipped[op]
    if not getattr(left, "processing_time", False):
        return None
    value = getattr(right, "literal", None)
    if _kind(value) != "number" or (bounds := _widened(value)) is None:
        return None
    if op in (">", ">="):
        return bounds[0], math.inf
    if op in ("<", "<="):
        return -math.inf, bounds[1]
    return bounds if op == "==" else None


def _marked(predicate: Predicate, **marks: Any) -> Predicate:
    for name, value in marks.items():
        setattr(predicate, name, value)
    return predicate


class _WhereParser:
    """Recursive descent over: or > and > not > comparison > operand.

    Besides the predicate, it works out `processing_range`: an interval that the numeric
    `mp_processing_time_ms` of any matching event must lie in, when the expression implies one
    (comparisons of it with numbers joined by `and`, or `or` of such). The export uses it to read
    only those events from the day's index; they are then checked with the predicate itself.
    """

    def __init__(self, text: str):
        self.tokens, self.i = _tokenize(text), 0

    def parse(self) -> Predicate:
        if not self.tokens:
            raise WhereError("empty expression")
        expr = self._or()
        if self.i < len(self.tokens):
            raise WhereError(f"unexpected {self.tokens[self.i][1]!r}")
        return _marked(
            lambda props: _truthy(expr(props)),
            processing_range=getattr(expr, "processing_range", None),
        )

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
            right = self._and()
            ra, rb = (getattr(x, "processing_range", None) for x in (left, right))
            either = (min(ra[0], rb[0]), max(ra[1], rb[1])) if ra and rb else None
            left = (lambda a, b: lambda p: _truthy(a(p)) or _truthy(b(p)))(left, right)
            left = _marked(left, processing_range=either)
        return left

    def _and(self) -> Predicate:
        left = self._not()
        while self._accept("and"):
            right = self._not()
            ra, rb = (getattr(x, "processing_range", None) for x in (left, right))
            both = (max(ra[0], rb[0]), min(ra[1], rb[1])) if ra and rb else ra or rb
            left = (lambda a, b: lambda p: _truthy(a(p)) and _truthy(b(p)))(left, right)
            left = _marked(left, processing_range=both)
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
        return _marked(
            lambda p: _compare(op, left(p), right(p)),
            processing_range=_comparison_range(op, left, right),
        )

    def _operand(self) -> Predicate:
        token = self._peek()
        if token is None:
            raise WhereError("unexpected end of expression")
        self.i += 1
        kind, value = token
        if kind == "literal":
            return _marked(lambda p: value, literal=value)
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
            # number() leaves a number as it is: it compares like the bare property.
            reads_time = value == "number" and getattr(arg, "processing_time", False)
            return _marked(lambda p: func(arg(p)), processing_time=reads_time)
        raise WhereError(f"unsupported {value!r}")

    def _property(self) -> Predicate:
        self._expect("[")
        token = self._peek()
        if token is None or token[0] != "literal" or not isinstance(token[1], str):
            raise WhereError("expected a property name string after properties[")
        self.i += 1
        self._expect("]")
        name = token[1]
        return _marked(lambda p: p.get(name, _UNDEFINED), processing_time=name == PROCESSING_TIME)


def compile_where(text: str) -> Predicate:
    """Compile a segmentation expression into a predicate over a properties dict.

    Supported: `properties["name"]`, string/number/boolean literals, `== != > >= < <= in`,
    `and or not`, parentheses and `defined() number() string() boolean()`. The predicate's
    `processing_range` attribute is the interval its expression confines a numeric
    `mp_processing_time_ms` to, or None (see `_WhereParser`).
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
    """Count this query against the per-project windows; the per-second one is checked first.

    The windows run on the sandbox clock, so a replayed day spends its hourly budget as the real
    day would.
    """
    now = time.monotonic() + state.clock_offset_s
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
    """Today on the sandbox clock, in the project timezone (docs/mixpanel.md §3)."""
    return state.now().astimezone(ZoneInfo(state.settings["mixpanel_project_timezone"])).date()


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
    #: Bounds that `where` puts on `mp_processing_time_ms` (see `compile_where`), if any.
    processing_range: Range | None = None

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
    where = _parse_where(params)
    return ExportQuery(
        from_date=from_date,
        to_date=to_date,
        events=frozenset(events) if events is not None else None,
        where=where,
        limit=_parse_int(params, "limit", 1, MAX_EXPORT_LIMIT),
        time_in_ms=_parse_bool(params, "time_in_ms"),
        processing_range=getattr(where, "processing_range", None),
    )


def _select_line(raw: bytes, query: ExportQuery, cutoff_ms: float | None = None) -> bytes | None:
    """The line as exported, or None when filtered out.

    With `cutoff_ms`, a line processed after it is not exported yet. A stored line that is not
    JSON (a deliberately split record) passes through verbatim, because the real service breaks
    lines after it has selected them.
    """
    if not query.rewrites_lines and cutoff_ms is None:
        return raw
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if not isinstance(line, dict):
        return raw
    if cutoff_ms is not None:
        processed = _processing_ms(line)
        if processed is not None and processed > cutoff_ms:
            return None
        if not query.rewrites_lines:
            return raw
    properties = line.get("properties")
    if not isinstance(properties, dict):
        properties = {}  # nothing to filter on (the real export never has such a line)
    if query.events is not None and line.get("event") not in query.events:
        return None
    if query.where is not None and not query.where(properties):
        return None
    if query.time_in_ms and _kind(properties.get("time")) == "number":
        properties["time"] = int(round(properties["time"] * 1000))
    return (_dumps(line) + "\n").encode("utf-8")


def export_cutoff_ms(state: SandboxState, now: datetime | None = None) -> float:
    """The latest processing time (UTC ms) an export shows: the sandbox clock less setting
    `mixpanel_export_delay_s`."""
    now = now or state.now()
    return (now.timestamp() - float(state.settings.get("mixpanel_export_delay_s") or 0)) * 1000


def export_lines(
    state: SandboxState, query: ExportQuery, now: datetime | None = None
) -> Iterator[bytes]:
    """The export's lines as of `now` (default: the sandbox clock), day by day, in file order."""
    cutoff_ms = export_cutoff_ms(state, now)
    lines = (line for day in query.days for line in _export_day(state, day, query, cutoff_ms))
    return islice(lines, query.limit) if query.limit else lines


def _export_day(
    state: SandboxState, day: date, query: ExportQuery, cutoff_ms: float
) -> Iterator[bytes]:
    """One day's exported lines, one file open at a time."""
    try:
        f = open(event_file(state, day), "rb")  # noqa: SIM115 (closed below, lines are lazy)
    except FileNotFoundError:
        return
    with f:
        signature = _signature(f)
        catalog = _catalog(state, day, f, signature)
        if query.processing_range is not None:
            index = _sorted_index(state, day, f, signature, catalog)
            yield from _indexed_lines(index, query, cutoff_ms)
        elif not catalog.hides_some(cutoff_ms):
            for raw in _lines_of(f):
                if (selected := _select_line(raw, query)) is not None:
                    yield selected
        else:
            for raw, code in zip(_lines_of(f), catalog.codes.tolist(), strict=False):
                if code > cutoff_ms:
                    continue  # processed too recently
                check = cutoff_ms if code != code else None  # NaN: unknown, parse to learn
                if (selected := _select_line(raw, query, check)) is not None:
                    yield selected


def _indexed_lines(index: _SortedIndex, query: ExportQuery, cutoff_ms: float) -> Iterator[bytes]:
    """The full scan's answer for a query with a processing-time range, read from the index:
    visible lines in the range and the unknown lines, each selected as the scan would."""
    low, high = query.processing_range
    high = min(high, cutoff_ms)
    start = int(np.searchsorted(index.times, low, side="left"))
    stop = int(np.searchsorted(index.times, high, side="right")) if low <= high else start
    picked = [(n, raw, True) for n, raw in index.read(0, index.unknown)]
    shift = index.unknown
    picked += [(n, raw, False) for n, raw in index.read(shift + start, shift + stop)]
    picked.sort(key=lambda item: item[0])
    for _, raw, unknown in picked:
        if (selected := _select_line(raw, query, cutoff_ms if unknown else None)) is not None:
            yield selected


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
