"""Amplitude export (zip of hourly gzip JSON lines) → raw zips in the lake → canonical events.

Amplitude selects by upload hour (server_upload_time, UTC) and makes an hour exportable about two
hours after it ends. So a run exports whole upload days, never an hour younger than the
configured delay, and re-reads the look-back days each run; canonical partitions are upload days,
each replaced whole, so late data is picked up and nothing is counted twice.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import requests

from pql.config import AmplitudeSource
from pql.events.canonical import Counts, Quarantine, RowBuffer, finish, first_value, split_by_day
from pql.events.transport import CredentialsError, ExportError, send, transient
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)

HOSTS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
# Amplitude drops an event whose insert id it has seen for the same device; the uuid identifies
# a stored event, so a re-read window brings back the same uuid.
DEDUP_KEY = ["device_id", "event_id"]
MAX_LINE_BYTES = 1_000_000
TRUNCATED = "truncated gzip stream"


def base_url(residency: str, host: str | None = None) -> str:
    return host.rstrip("/") if host else HOSTS[residency]


def _hour(t: datetime) -> str:
    return f"{t:%Y%m%dT%H}"


def download(
    session: requests.Session,
    base: str,
    start: datetime,
    end: datetime,
    dest_dir: Path,
    *,
    attempts: int = 6,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Path]:
    """Fetch upload hours start..end (inclusive) as zip files in `dest_dir`.

    404 means no data (no file); 400 (over 4 GB) and 504 (too slow) split the window in halves
    down to single hours; 429 and 5xx back off and retry; 401/403 stop with a clear message.
    """
    url = f"{base}/api/2/export"
    params = {"start": _hour(start), "end": _hour(end)}
    # 504 means "too large to finish": split the window rather than ask again.
    resp = send(
        session,
        "GET",
        url,
        attempts=attempts,
        sleep=sleep,
        params=params,
        stream=True,
        timeout=(10, 1800),
        retry_on=lambda s: transient(s) and s != 504,
    )
    with resp:
        status = resp.status_code
        if status == 200:
            dest = dest_dir / f"export_{_hour(start)}_{_hour(end)}.zip"
            with open(dest, "wb") as f:
                for chunk in resp.iter_content(1 << 20):
                    f.write(chunk)
            return [dest]
        if status == 404:
            return []
        body = resp.text[:300]
        if status in (401, 403):
            raise CredentialsError(
                f"Amplitude refused the credentials ({status}: {body}). Check the "
                "connection's login (project API key) and password (secret key)."
            )
        if status in (400, 504) and end > start:
            mid = start + timedelta(hours=int((end - start).total_seconds() // 3600) // 2)
            log.warning(
                "Amplitude answered %s for %s..%s: splitting the window",
                status,
                _hour(start),
                _hour(end),
            )
            return download(session, base, start, mid, dest_dir, sleep=sleep) + download(
                session, base, mid + timedelta(hours=1), end, dest_dir, sleep=sleep
            )
        if transient(status):
            raise ExportError(f"Amplitude export kept failing with {status}: {body}")
        raise ExportError(
            f"Amplitude rejected {params} ({status}): {body}. A single hour "
            "over 4 GB needs Amplitude's S3 export instead."
        )


def read_lines(zip_path: Path) -> Iterator[tuple[str, str]]:
    """(member:line, text) for every line of every gzip member; a broken member ends itself."""
    with zipfile.ZipFile(zip_path) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".json.gz")):
            n = 0
            try:
                with zf.open(name) as raw, gzip.open(raw, "rt", encoding="utf-8",
                                                     errors="replace") as f:  # fmt: skip
                    for n, line in enumerate(f, start=1):  # noqa: B007 (n used below)
                        yield f"{name}:{n}", line.rstrip("\n")
            except (EOFError, zlib.error, OSError, zipfile.BadZipFile) as e:
                yield f"{name}:{n + 1}", f"\x00{TRUNCATED}: {e}"


def parse_time(text) -> datetime | None:
    if not isinstance(text, str):
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def parse_line(line: str, source: str, email_properties: list[str],
               account_properties: list[str]):  # fmt: skip
    """One export line → (canonical row, None) or (None, the reason it was quarantined)."""
    if line.startswith("\x00"):
        return None, line[1:].split(":")[0]
    if len(line.encode("utf-8", "replace")) > MAX_LINE_BYTES:
        return None, "line too large"
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "not valid JSON"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    name = obj.get("event_type")
    if not isinstance(name, str) or not name:
        return None, "missing event_type"
    ts = parse_time(obj.get("event_time"))
    if ts is None:
        return None, "missing or unparsable event_time"
    uploaded = parse_time(obj.get("server_upload_time"))
    if uploaded is None:
        return None, "missing or unparsable server_upload_time"
    user, device = obj.get("user_id"), obj.get("device_id")
    if not user and not device:
        return None, "missing user_id and device_id"
    event_id = obj.get("$insert_id") or obj.get("uuid")
    if not event_id:
        event_id = hashlib.sha1(line.encode()).hexdigest()
    event_props = (
        obj.get("event_properties") if isinstance(obj.get("event_properties"), dict) else {}
    )
    user_props = obj.get("user_properties") if isinstance(obj.get("user_properties"), dict) else {}
    groups = obj.get("groups") if isinstance(obj.get("groups"), dict) else {}
    return {
        "source": source,
        "event_id": str(event_id),
        "event_name": name,
        "user_key": str(user) if user else f"$device:{device}",
        "device_id": str(device) if device else None,
        "email": first_value([user_props, event_props], email_properties, lower=True),
        "account_key": first_value([groups], account_properties),
        "ts": ts,
        "received_at": uploaded,
        "properties": json.dumps(event_props, separators=(",", ":"), ensure_ascii=False),
    }, None


def to_canonical(zips: list[Path], out_dir: Path, quarantine_dir: Path, *, source: str,
                 email_properties: list[str], account_properties: list[str]) -> Counts:  # fmt: skip
    """Parse the window's zips into deduplicated canonical Parquet; returns the counts."""
    counts = Counts()
    staged = out_dir / "_staged.parquet"
    rows = RowBuffer(staged)
    quarantine = Quarantine(quarantine_dir / "lines.jsonl.gz", counts)
    try:
        for zip_path in zips:
            for where, line in read_lines(zip_path):
                if not line.strip():
                    continue
                counts.raw += 1
                row, reason = parse_line(line, source, email_properties, account_properties)
                if row is None:
                    quarantine.add(f"{zip_path.name}/{where}", reason, line)
                else:
                    rows.append(row)
    finally:
        rows.close()
        quarantine.close()
    return finish(staged, out_dir / "part-0.parquet", counts, DEDUP_KEY)


def extract_window(session: requests.Session, lake: Lake, src: AmplitudeSource, *, base: str,
                   first: date, last: date, email_properties: list[str],
                   account_properties: list[str], now: datetime | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> dict:  # fmt: skip
    """Export upload days first..last and replace each day's partition atomically.

    Hours younger than the source's availability delay are not asked for: the look-back of
    a later run reads them once Amplitude has them.
    """
    now = now or datetime.now(UTC)
    start = datetime.combine(first, datetime.min.time(), UTC)
    ready = (now - timedelta(hours=src.availability_delay_hours)).replace(
        minute=0, second=0, microsecond=0
    ) - timedelta(hours=1)
    end = min(datetime.combine(last, datetime.min.time(), UTC) + timedelta(hours=23), ready)
    if end < start:
        raise ExportError(
            f"{first}..{last} is not exportable yet: Amplitude needs "
            f"{src.availability_delay_hours} h after an hour ends"
        )
    with atomic_dir(lake.raw(src.name, last)) as raw_dir, \
         atomic_dir(lake.quarantine(src.name, last)) as q_dir:  # fmt: skip
        for attempt in (1, 2):
            zips = download(session, base, start, end, raw_dir, sleep=sleep)
            staged = raw_dir / "_staged"
            staged.mkdir()
            counts = to_canonical(
                zips,
                staged,
                q_dir,
                source=src.name,
                email_properties=email_properties,
                account_properties=account_properties,
            )
            if TRUNCATED not in counts.reasons or attempt == 2:
                break
            # A broken member is usually a transfer fault: fetch the window once more.
            log.warning("a gzip member of %s..%s was truncated; fetching it again", first, last)
            for folder in (raw_dir, q_dir):
                shutil.rmtree(folder)
                folder.mkdir()
        per_day = split_by_day(
            staged / "part-0.parquet", lake, src.name, first, last, day_of="received_at"
        )
        for p in staged.iterdir():
            p.unlink()
        staged.rmdir()
        manifest = {
            "source": src.name,
            "first": first.isoformat(),
            "last": last.isoformat(),
            "hours": [_hour(start), _hour(end)],
            **counts.as_dict(),
            "reasons": counts.reasons,
            "per_day": {d.isoformat(): n for d, n in per_day.items()},
        }
        (raw_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info(
        "%s %s..%s (hours %s..%s): %s raw lines = %s canonical + %s duplicates + %s quarantined",
        src.name,
        first,
        last,
        _hour(start),
        _hour(end),
        counts.raw,
        counts.canonical,
        counts.duplicates,
        counts.quarantined,
    )
    if counts.raw and counts.quarantined / counts.raw > src.bad_line_threshold:
        raise ExportError(
            f"{src.name} {first}..{last}: {counts.quarantined} of {counts.raw} lines could not "
            f"be parsed (over bad_line_threshold {src.bad_line_threshold:.1%}); reasons: "
            f"{counts.reasons}. The lines are kept in {lake.quarantine(src.name, last)}."
        )
    return {
        "first": first.isoformat(),
        "last": last.isoformat(),
        **counts.as_dict(),
        "raw_path": str(lake.raw(src.name, last)),
    }
