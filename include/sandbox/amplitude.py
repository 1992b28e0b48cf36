"""Amplitude emulator: the Export API (``GET /api/2/export``) and the storage it serves.

Follows docs/amplitude.md. Storage, owned by this module:

* Credentials: ``credentials(state)``, kept under ``"amplitude"`` in the sandbox's
  credentials.json (added on first use, so older sandboxes gain them too).
* Events: one gzip JSON-lines file per UTC *upload* hour, ``hour_file(state, hour)``; each line is
  an Amplitude export event, filed by its ``server_upload_time``. ``HourWriter`` writes them and
  ``to_amplitude`` turns a line of the synthetic world into one.

The export answers a zip of ``<pid>/<pid>_<yyyy-MM-dd>_<H>#<n>.json.gz`` members (H unpadded,
``#n`` partitions of ``amplitude_partition_lines`` lines), selected by upload hour with both ends
inclusive. Data becomes visible ``amplitude_delay_hours`` (a fraction of an hour is allowed)
after upload on the sandbox clock (``SandboxState.now``, setting ``clock_offset_s``), so an hour
is whole that long after it ends, and a recent hour is partial or absent (404) exactly as the
docs warn. Archives larger than ``amplitude_max_bytes``
(the stand-in for 4 GB) are refused with 400.

Settings (read with defaults, so they may be absent from settings.json):
``amplitude_delay_hours`` (2), ``amplitude_max_bytes`` (4_000_000_000),
``amplitude_partition_lines`` (50_000).

Fault injection (``state.queue_fault("amplitude", status)``): a queued 4xx/5xx status (429, 503,
504, ...) is answered instead of the request; ``CORRUPT_FAULT`` (298) serves the archive with its
first member cut to half its length (the zip stays valid, gunzip of that member fails);
``ZIP_CUT_FAULT`` (297) serves it cut in its central directory (the zip does not open). Faults of
the connection itself (a cut or reset body) come from ``sandbox.wire``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gzip
import hashlib
import hmac
import json
import random
import re
import secrets
import struct
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from sandbox.partitioned import PartitionedWriter
from sandbox.state import SandboxState, write_json_private

EXPORT_PATH = "/api/2/export"

#: Queued on target "amplitude": serve the archive with its first gzip member truncated.
CORRUPT_FAULT = 298
#: Queued on target "amplitude": serve the archive cut in the middle of its central directory
#: (the zip's table of contents, at its end), with a Content-Length that matches the cut body,
#: as a server that lost the end of a file it was sending would.
ZIP_CUT_FAULT = 297

DEFAULT_PROJECT_ID = 187520
#: Settings this emulator reads, with their defaults (used when settings.json lacks them).
SETTINGS = {
    "amplitude_delay_hours": 2,  # data becomes exportable this long after upload
    "amplitude_max_bytes": 4_000_000_000,  # stand-in for the documented 4 GB per request
    "amplitude_partition_lines": 50_000,  # lines per `#n` member of an hour
}
MAX_RANGE_HOURS = 365 * 24
CHUNK_BYTES = 256 * 1024
SESSION_MS = 30 * 60 * 1000  # Amplitude's default session timeout (web)

_WINDOW_RE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{1,2})")  # old docs show one-digit hours
_UPLOAD_RE = re.compile(rb'"server_upload_time"\s*:\s*"([^"]+)"')
_EPOCH = datetime(1970, 1, 1)  # naive UTC: export timestamps carry no zone suffix
_CREDENTIALS_LOCK = threading.Lock()

# One shared encoder: json.dumps with options builds a new encoder per call (hot in the writer).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class AmplitudeError(Exception):
    """An error answer with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _setting(state: SandboxState, key: str):
    return state.settings.get(key, SETTINGS[key])


def _utcnow(state: SandboxState) -> datetime:
    """The sandbox clock (`SandboxState.now`, moved by setting `clock_offset_s`)."""
    return state.now()


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


def credentials(state: SandboxState) -> dict:
    """The project's {"project_id", "api_key", "secret_key"}, created and persisted on first use.

    credentials.json is re-read before generating, so a process that started before another one
    added the keys adopts them instead of overwriting them.
    """
    creds = state.credentials.get("amplitude")
    if creds is not None:
        return creds
    with _CREDENTIALS_LOCK:
        path = state.root / "credentials.json"
        stored = json.loads(path.read_text()) if path.exists() else dict(state.credentials)
        creds = stored.get("amplitude")
        if creds is None:
            creds = stored["amplitude"] = {
                "project_id": DEFAULT_PROJECT_ID,
                "api_key": secrets.token_hex(16),
                "secret_key": secrets.token_hex(16),
            }
            write_json_private(path, stored)
        state.credentials["amplitude"] = creds
        return creds


def connection_env(state: SandboxState, base_url: str) -> dict[str, str]:
    """The AIRFLOW_CONN_AMPLITUDE_DEFAULT variable pointing at this sandbox."""
    creds = credentials(state)
    conn = {
        "conn_type": "http",
        "host": base_url,
        "login": creds["api_key"],
        "password": creds["secret_key"],
    }
    return {"AIRFLOW_CONN_AMPLITUDE_DEFAULT": json.dumps(conn)}


# --------------------------------------------------------------------------------------------
# Timestamps and event conversion
# --------------------------------------------------------------------------------------------


def format_time(ms: int) -> str:
    """Epoch milliseconds as the export's `YYYY-MM-DD HH:MM:SS.ffffff` (UTC, no zone)."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(" ", "microseconds")


def parse_time(text: str) -> datetime:
    """An export timestamp (with or without fraction) as an aware UTC datetime."""
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def _hour_of_prefix(prefix: str) -> datetime:
    return datetime.strptime(prefix, "%Y-%m-%d %H").replace(tzinfo=UTC)


def upload_hour(event: dict) -> datetime:
    """The UTC hour an event was uploaded in, i.e. the export hour that contains it."""
    return _hour_of_prefix(event["server_upload_time"][:13])


def _stable_int(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# Mixpanel keys that become Amplitude top-level fields or user properties, not event properties.
_MIXPANEL_RESERVED = {
    "time",
    "distinct_id",
    "$user_id",
    "$device_id",
    "$insert_id",
    "mp_processing_time_ms",
    "mp_lib",
    "$os",
    "$browser",
    "mp_country_code",
}
_USER_PROPERTIES = ("email", "plan")
_RENAMED = {"$current_url": "[Amplitude] Page URL"}  # what Amplitude's browser SDK records
_COUNTRIES = {
    "US": "United States",
    "GB": "United Kingdom",
    "DE": "Germany",
    "FR": "France",
    "CA": "Canada",
    "AU": "Australia",
    "IN": "India",
    "BR": "Brazil",
}


def to_amplitude(mixpanel_line: dict, rng: random.Random, project_id: int) -> dict:
    """One Mixpanel export line of the synthetic world as an Amplitude export event.

    Identity-derived fields (amplitude_id, session_id, ip) are stable per user or device; the
    upload lag is the world's own `mp_processing_time_ms` (seconds, occasionally days), so both
    vendors see the same late events. Everything else random comes from `rng`.
    `user_creation_time` is null: one line does not tell when the user was first seen.
    """
    props = mixpanel_line["properties"]
    distinct_id = str(props.get("distinct_id", ""))
    anonymous = distinct_id.startswith("$device:")
    device_id = str(props.get("$device_id") or distinct_id.removeprefix("$device:"))
    user_id = None if anonymous else (props.get("$user_id") or distinct_id or None)

    event_ms = int(props["time"]) * 1000 + rng.randrange(1000)  # Amplitude keeps milliseconds
    processed_ms = props.get("mp_processing_time_ms")
    if processed_ms is None:  # same lag model as the world: seconds, 1% hours to days
        lag_ms = rng.randrange(200, 5000) if rng.random() > 0.01 else rng.randrange(3600, 259200000)
        processed_ms = event_ms + lag_ms
    upload_ms = max(int(processed_ms), event_ms + 200)
    received_ms = upload_ms - rng.randrange(0, 40)
    skew_ms = rng.randrange(-1500, 1500)  # the device clock is a little off
    session_offset = _stable_int("session", device_id) % SESSION_MS

    event_properties, user_properties = {}, {}
    for key, value in props.items():
        if key in _USER_PROPERTIES:
            user_properties[key] = value
        elif key not in _MIXPANEL_RESERVED:
            event_properties[_RENAMED.get(key, key)] = value
    if anonymous:
        user_properties.pop("plan", None)  # a visitor has no plan yet

    country = props.get("mp_country_code")
    return {
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "$insert_id": props.get("$insert_id"),
        "event_type": mixpanel_line["event"],
        "event_time": format_time(event_ms),
        "client_event_time": format_time(event_ms + skew_ms),
        "client_upload_time": format_time(received_ms - rng.randrange(20, 400) + skew_ms),
        "server_received_time": format_time(received_ms),
        "server_upload_time": format_time(upload_ms),
        "processed_time": format_time(upload_ms + rng.randrange(500, 20_000)),
        "user_creation_time": None,
        "event_id": rng.randrange(1, 100_000),  # a per-device counter: never unique
        "amplitude_id": 10**11 + _stable_int("amplitude", user_id or device_id) % (9 * 10**11),
        "user_id": user_id,
        "device_id": device_id,
        "session_id": (event_ms - session_offset) // SESSION_MS * SESSION_MS + session_offset,
        "event_properties": event_properties,
        "user_properties": user_properties,
        "groups": {},
        "group_properties": {},
        "data": {"path": "/", "group_first_event": {}, "group_ids": {}},
        "app": project_id,
        "$schema": 13,
        "library": "amplitude-ts/2.11.0",
        "platform": "Web",
        "os_name": props.get("$browser"),
        "os_version": None,
        "device_type": None,
        "device_family": props.get("$os"),
        "device_brand": None,
        "device_manufacturer": None,
        "device_model": None,
        "device_carrier": None,
        "version_name": None,
        "start_version": None,
        "language": "English",
        "country": _COUNTRIES.get(country, country),
        "region": None,
        "city": None,
        "dma": None,
        "ip_address": f"198.51.100.{_stable_int('ip', device_id) % 254 + 1}",  # TEST-NET-2
        "location_lat": None,
        "location_lng": None,
        "paying": None,
        "adid": None,
        "idfa": None,
        "amplitude_attribution_ids": None,
        "amplitude_event_type": None,
        "is_attribution_event": False,
        "sample_rate": None,
    }


# --------------------------------------------------------------------------------------------
# Event storage
# --------------------------------------------------------------------------------------------


def _as_hour(hour: datetime) -> datetime:
    """`hour` in UTC truncated to the hour; a naive value is taken as UTC."""
    hour = hour.replace(tzinfo=UTC) if hour.tzinfo is None else hour.astimezone(UTC)
    return hour.replace(minute=0, second=0, microsecond=0)


def events_folder(state: SandboxState) -> Path:
    return state.events_dir / "amplitude" / str(credentials(state)["project_id"])


def hour_file(state: SandboxState, hour: datetime) -> Path:
    """The gzip JSON-lines file holding the events uploaded in one UTC hour."""
    return events_folder(state) / f"{_as_hour(hour):%Y-%m-%dT%H}.jsonl.gz"


def stored_hours(state: SandboxState) -> dict[datetime, Path]:
    """Every stored upload hour and its file."""
    folder = events_folder(state)
    if not folder.is_dir():
        return {}
    hours = {}
    for path in folder.glob("*.jsonl.gz"):
        with contextlib.suppress(ValueError):  # temporary files and strays
            stamp = datetime.strptime(path.name.removesuffix(".jsonl.gz"), "%Y-%m-%dT%H")
            hours[stamp.replace(tzinfo=UTC)] = path
    return hours


class HourWriter(PartitionedWriter):
    """Events into per-upload-hour gzip files (see `PartitionedWriter`)."""

    def __init__(self, state: SandboxState, *, append: bool = False,
                 buffer_bytes: int = 32 * 2**20, hour_flush_bytes: int = 2**20,
                 compresslevel: int = 5):  # fmt: skip
        super().__init__(
            lambda hour: hour_file(state, hour),
            append=append,
            buffer_bytes=buffer_bytes,
            flush_bytes=hour_flush_bytes,
            compresslevel=compresslevel,
        )

    def write(self, event: dict) -> None:
        """Add one event to the hour of its `server_upload_time`."""
        self.write_raw(upload_hour(event), _dumps(event))

    def write_raw(self, hour: datetime, text: str) -> None:
        """Add a verbatim line to `hour`, e.g. a deliberately broken record."""
        super().write_raw(_as_hour(hour), text)


def write_events(state: SandboxState, events: Iterable[dict], *, append: bool = False) -> dict:
    """Write events into their upload-hour files (see `HourWriter`); returns events per hour."""
    with HourWriter(state, append=append) as writer:
        for event in events:
            writer.write(event)
    return writer.counts


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportWindow:
    """A validated request: upload hours `start` through `end`, both included (UTC)."""

    start: datetime
    end: datetime


def _parse_hour(params: dict, name: str) -> datetime:
    raw = params.get(name)
    if not raw:
        raise AmplitudeError(400, f"Missing required parameter: {name}")
    match = _WINDOW_RE.fullmatch(raw)
    try:
        if match is None:
            raise ValueError
        year, month, day, hour = (int(g) for g in match.groups())
        return datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError:
        raise AmplitudeError(
            400, f"Invalid {name} {raw!r}: expected YYYYMMDDTHH, e.g. 20260101T05"
        ) from None


def parse_window(params: dict) -> ExportWindow:
    """Validate `start`/`end`: well formed, end not before start, at most 365 days of hours."""
    start, end = _parse_hour(params, "start"), _parse_hour(params, "end")
    if end < start:
        raise AmplitudeError(400, "end must not be before start")
    if (end - start) // timedelta(hours=1) + 1 > MAX_RANGE_HOURS:
        raise AmplitudeError(400, "The time range may not exceed 365 days")
    return ExportWindow(start, end)


def member_name(project_id: int, hour: datetime, partition: int) -> str:
    """`<pid>/<pid>_<yyyy-MM-dd>_<H>#<n>.json.gz`, the hour not zero-padded."""
    return f"{project_id}/{project_id}_{hour:%Y-%m-%d}_{hour.hour}#{partition}.json.gz"


def _visible_before(line: bytes, cutoff: datetime) -> bool:
    """Whether a stored line was uploaded by `cutoff`; unreadable lines count as visible."""
    match = _UPLOAD_RE.search(line)
    if match is None:
        return True
    try:
        return parse_time(match.group(1).decode()) <= cutoff
    except (UnicodeDecodeError, ValueError):
        return True


def _hour_lines(path: Path, cutoff: datetime | None) -> Iterator[bytes]:
    """The stored lines of one hour, newline-terminated; only those uploaded by `cutoff` if set."""
    with gzip.open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            line = raw if raw.endswith(b"\n") else raw + b"\n"
            if cutoff is None or _visible_before(line, cutoff):
                yield line


def export_hours(
    state: SandboxState, window: ExportWindow, now: datetime
) -> Iterator[tuple[datetime, Iterator[bytes]]]:
    """The window's hours in order, each with the lines visible at `now`.

    An event becomes visible `amplitude_delay_hours` (may be fractional) after its upload, so an
    hour that ended more than the delay ago is complete, a younger one is partial, and one that
    started after the cutoff is absent. Hours without a stored file are skipped.
    """
    delay = timedelta(hours=float(_setting(state, "amplitude_delay_hours")))
    cutoff = now - delay
    for hour, path in sorted(stored_hours(state).items()):
        if not window.start <= hour <= window.end or hour > cutoff:
            continue
        complete = hour + timedelta(hours=1) <= cutoff
        yield hour, _hour_lines(path, None if complete else cutoff)


def _write_member(
    dest: BinaryIO, lines: Iterable[bytes], archive_size: Callable[[], int], max_bytes: int
) -> None:
    """Gzip `lines` into `dest`, stopping as soon as `archive_size()` passes `max_bytes`."""
    with gzip.GzipFile(fileobj=dest, mode="wb", compresslevel=6, mtime=0) as gz:
        for i, line in enumerate(lines):
            gz.write(line)
            if i % 1024 == 1023 and archive_size() > max_bytes:
                raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> AmplitudeError:
    return AmplitudeError(
        400, f"Exported data too large: over {max_bytes} bytes. Request a shorter time range."
    )


def build_archive(
    state: SandboxState,
    window: ExportWindow,
    target: BinaryIO,
    *,
    now: datetime,
    corrupt: bool = False,
) -> int:
    """Write the export zip for `window` into `target` (seekable); returns the member count.

    Each hour is split into members of `amplitude_partition_lines` lines, numbered from #0.
    Members are stored, not deflated: they are gzip already. Raises 400 once the archive grows
    past `amplitude_max_bytes`. With `corrupt`, the first member is cut to half its length.
    """
    project_id = credentials(state)["project_id"]
    per_member = max(1, int(_setting(state, "amplitude_partition_lines")))
    max_bytes = int(_setting(state, "amplitude_max_bytes"))
    members = 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for hour, lines in export_hours(state, window, now):
            first = next(lines, None)
            partition = 0
            while first is not None:
                part = _prepend(first, islice(lines, per_member - 1))
                name = member_name(project_id, hour, partition)
                if corrupt and members == 0:
                    with tempfile.SpooledTemporaryFile(8 * 2**20) as buf:
                        _write_member(buf, part, lambda: target.tell() + buf.tell(), max_bytes)
                        size = buf.tell()
                        buf.seek(0)
                        zf.writestr(name, buf.read(size // 2))
                else:
                    with zf.open(name, "w") as member:
                        _write_member(member, part, target.tell, max_bytes)
                if target.tell() > max_bytes:
                    raise _too_large(max_bytes)
                members += 1
                partition += 1
                first = next(lines, None)
    if target.tell() > max_bytes:  # the central directory, written on close, counts too
        raise _too_large(max_bytes)
    return members


def _prepend(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _stream_file(f: BinaryIO, size: int) -> Iterator[bytes]:
    with f:
        while size > 0 and (chunk := f.read(min(CHUNK_BYTES, size))):
            size -= len(chunk)
            yield chunk


def export_response(
    state: SandboxState, window: ExportWindow, *, corrupt: bool = False, cut: bool = False
):
    """The archive as a streamed application/zip response; 404 when no event is visible.

    The zip is built in a temporary file (archives may be gigabytes) that is unlinked while open,
    so it disappears however the download ends. With `cut`, only the archive up to the middle of
    its central directory is served.
    """
    tmp_dir = state.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        f = cleanup.enter_context(tempfile.TemporaryFile(dir=tmp_dir, suffix=".zip"))
        if build_archive(state, window, f, now=_utcnow(state), corrupt=corrupt) == 0:
            raise AmplitudeError(404, "No data available for the time range requested")
        size = f.tell()
        if cut:
            size = _central_directory(f, size)
        f.seek(0)
        cleanup.pop_all()  # from here the response body owns (and closes) the file
    return StreamingResponse(
        _stream_file(f, size), media_type="application/zip", headers={"Content-Length": str(size)}
    )


def _central_directory(f: BinaryIO, size: int) -> int:
    """The middle of the zip's central directory (from its end record, 22 bytes, no comment)."""
    f.seek(size - 22)
    (offset,) = struct.unpack("<I", f.read(22)[16:20])
    return offset + (size - offset) // 2


# --------------------------------------------------------------------------------------------
# Requests: auth, faults, errors
# --------------------------------------------------------------------------------------------


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        value = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = value.partition(":")
    return (user, password) if sep else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _authenticate(state: SandboxState, request: Request) -> None:
    """HTTP Basic with the project's API key and secret key; the keys select the project."""
    creds = credentials(state)
    pair = _basic_credentials(request.headers.get("authorization"))
    if pair is None:
        raise AmplitudeError(401, "Missing or malformed Basic authorization (api_key:secret_key)")
    if not (_same(pair[0], creds["api_key"]) and _same(pair[1], creds["secret_key"])):
        raise AmplitudeError(401, "Invalid API key or secret key")


def _raise_for_fault(status: int | None) -> None:
    """Answer a queued error status instead of the request (other statuses are ignored)."""
    if status is None or status < 400:
        return
    if status == 429:
        raise AmplitudeError(
            429, "Exceeded concurrent limit: at most 5 concurrent requests per project"
        )
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Server error" if status >= 500 else "Request failed"
    raise AmplitudeError(status, phrase)


def _error_response(exc: AmplitudeError) -> Response:
    """Bodies are undocumented: a plain-text 404 (as observed), `{"error": ...}` otherwise."""
    if exc.status == 404:
        return PlainTextResponse(exc.message, status_code=404)
    headers = {"WWW-Authenticate": 'Basic realm="Amplitude"'} if exc.status == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


def router(state: SandboxState) -> APIRouter:
    """The Amplitude routes, bound to `state`."""
    api = APIRouter()
    credentials(state)  # create the keys at startup, before any client asks for them

    @api.get(EXPORT_PATH)
    def export(request: Request) -> Response:
        # A sync endpoint: FastAPI runs it, and the body iterator, in its thread pool.
        fault = state.take_fault("amplitude")
        try:
            _raise_for_fault(fault)
            _authenticate(state, request)
            window = parse_window(dict(request.query_params))
            return export_response(
                state, window, corrupt=fault == CORRUPT_FAULT, cut=fault == ZIP_CUT_FAULT
            )
        except AmplitudeError as exc:
            return _error_response(exc)

    return api
