"""Amplitude export (zip of hourly gzip JSON lines) → raw zips in the lake → canonical events.

Amplitude selects by upload hour (server_upload_time, UTC) and makes an hour exportable about two
hours after it ends. So a run exports whole upload days, never an hour younger than the
configured delay, and re-reads the look-back days each run; canonical partitions are upload days,
each replaced whole, so late data is picked up and nothing is counted twice. The intraday
runs (README, "Speed to lead") add each hour as soon as it is exportable. Long because it holds
the client, the parser and both ways of asking.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import requests

from pql import http
from pql.config import AmplitudeSource
from pql.events import ExportError, IncompleteExport
from pql.events.canonical import (
    Counts,
    Quarantine,
    RowBuffer,
    append_new,
    finish,
    first_value,
    intraday_state,
    reconcile,
    save_intraday_state,
    split_by_day,
    touched_path,
)
from pql.http import Budget, CredentialsError, transient
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)

HOSTS = {"us": "https://amplitude.com", "eu": "https://analytics.eu.amplitude.com"}
# Amplitude drops an event whose insert id it has seen for the same device; the uuid identifies
# a stored event, so a re-read window brings back the same uuid.
DEDUP_KEY = ["device_id", "event_id"]
MAX_LINE_BYTES = 1_000_000


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
    conn_id: str = "amplitude_default",
    attempts: int = 6,
    sleep: Callable[[float], None] = time.sleep,
    budget: Budget | None = None,
    fetches: list[dict] | None = None,
) -> list[Path]:
    """Fetch upload hours start..end (inclusive) as zip files in `dest_dir`.

    404 means no data (no file); 400 (over 4 GB) and 504 (too slow) split the window in halves
    down to single hours; 429, 5xx, connection errors and archives that did not arrive whole
    (cut, reset, a zip that does not open, a gzip member that breaks) are fetched again with
    backoff; 401/403 stop with a clear message. Each request's attempts are appended to
    `fetches`.
    """
    window = f"{_hour(start)}..{_hour(end)}"
    dest = dest_dir / f"export_{_hour(start)}_{_hour(end)}.zip"
    # 504 means "too large to finish": split the window rather than ask again.
    got = http.download(
        session,
        f"{base}/api/2/export",
        dest,
        window=f"Amplitude export of upload hours {window}",
        attempts=attempts,
        check=ArchiveBody,
        sleep=sleep,
        budget=budget,
        retry_on=lambda s: transient(s) and s != 504,
        params={"start": _hour(start), "end": _hour(end)},
        timeout=(10, 1800),
    )
    if fetches is not None:
        fetches.append(got.record(window))
    status, body = got.status, got.text[:300]
    if status == 200:
        return [dest]
    if status == 404:
        return []
    if status in (401, 403):
        raise CredentialsError(
            f"Amplitude refused the credentials of connection {conn_id!r} ({status}: {body}). "
            "Check its login (project API key) and password (secret key)."
        )
    if status in (400, 504) and end > start:
        mid = start + timedelta(hours=int((end - start).total_seconds() // 3600) // 2)
        log.warning("Amplitude answered %s for %s: splitting the window", status, window)
        more = dict(conn_id=conn_id, attempts=attempts, sleep=sleep, budget=budget,
                    fetches=fetches)  # fmt: skip
        return download(session, base, start, mid, dest_dir, **more) + download(
            session, base, mid + timedelta(hours=1), end, dest_dir, **more
        )
    if transient(status):
        raise ExportError(f"Amplitude export kept failing with {status}: {body}")
    raise ExportError(
        f"Amplitude rejected hours {window} ({status}): {body}. A single hour "
        "over 4 GB needs Amplitude's S3 export instead."
    )


class ArchiveBody:
    """Whether an export archive arrived whole: the zip opens (its central directory is at the
    end, so a cut archive does not), and every member passes its CRC and is a gzip stream that
    ends with its last member's checksum."""

    def __init__(self, headers) -> None:
        pass

    def feed(self, chunk: bytes) -> None:
        pass  # a zip can only be judged whole from its end

    def finish(self, path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    check = http.GzipCheck()
                    with zf.open(name) as member:
                        while block := member.read(1 << 20):
                            if name.endswith(".gz"):
                                check.feed(block)
                    if name.endswith(".gz"):
                        check.finish(path)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise IncompleteExport(f"the zip archive is not whole ({e})") from e
        except IncompleteExport as e:
            raise IncompleteExport(f"a member of the zip archive is not whole: {e}") from e


def read_lines(zip_path: Path) -> Iterator[tuple[str, str]]:
    """(member:line, text) for every line of every gzip member; a member that breaks raises
    IncompleteExport (downloads are checked whole, so the file was damaged since)."""
    with zipfile.ZipFile(zip_path) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".json.gz")):
            n = 0
            try:
                with zf.open(name) as raw, gzip.open(raw, "rt", encoding="utf-8",
                                                     errors="replace") as f:  # fmt: skip
                    for n, line in enumerate(f, start=1):  # noqa: B007 (n used below)
                        yield f"{name}:{n}", line.rstrip("\n")
            except (EOFError, zlib.error, OSError, zipfile.BadZipFile) as e:
                raise IncompleteExport(
                    f"{zip_path.name}/{name}: the gzip member breaks after line {n} ({e}): the "
                    "raw export is not whole; extract its window again"
                ) from e


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
                   sleep: Callable[[float], None] = time.sleep,
                   budget: Budget | None = None) -> dict:  # fmt: skip
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
    fetches: list[dict] = []
    # An intraday run adding to one of these days waits, and so do we for one under way.
    with lake.lock(f"events-{src.name}"), \
         atomic_dir(lake.raw(src.name, last)) as raw_dir, \
         atomic_dir(lake.quarantine(src.name, last)) as q_dir:  # fmt: skip
        zips = download(session, base, start, end, raw_dir, conn_id=src.connection_id,
                        attempts=src.fetch_attempts, sleep=sleep, budget=budget,
                        fetches=fetches)  # fmt: skip
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
        intraday = {}
        if (staged / "part-0.parquet").exists():
            day = first
            while day <= last:  # before the partitions are replaced: the intraday batches
                got = reconcile(staged / "part-0.parquet", lake, src.name, day, DEDUP_KEY,
                                day_of="received_at")  # fmt: skip
                if got:
                    intraday[day.isoformat()] = got
                day += timedelta(days=1)
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
            "fetches": fetches,
            "per_day": {d.isoformat(): n for d, n in per_day.items()},
        }
        if intraday:
            manifest["intraday"] = intraday
        (raw_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for d in intraday:  # the daily export supersedes those days' intraday raw batches
            shutil.rmtree(lake.root / "raw" / src.name / "intraday" / f"date={d}", True)
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
    _fail_if_too_bad(counts, src, f"{first}..{last}", lake.quarantine(src.name, last))
    return {
        "first": first.isoformat(),
        "last": last.isoformat(),
        **counts.as_dict(),
        "fetch_retries": sum(f["attempts"] - 1 for f in fetches),
        "raw_path": str(lake.raw(src.name, last)),
    }


def _fail_if_too_bad(counts: Counts, src: AmplitudeSource, window: str, kept: Path) -> None:
    if counts.raw and counts.quarantined / counts.raw > src.bad_line_threshold:
        raise ExportError(
            f"{src.name} {window}: {counts.quarantined} of {counts.raw} lines could not be "
            f"parsed (over bad_line_threshold {src.bad_line_threshold:.1%}); reasons: "
            f"{counts.reasons}. The lines are kept in {kept}."
        )


def extract_fresh(
    session: requests.Session,
    lake: Lake,
    src: AmplitudeSource,
    *,
    base: str,
    now: datetime,
    email_properties: list[str],
    account_properties: list[str],
    budget: Budget | None = None,
    max_wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **_ignored,
) -> dict:
    """Bring the upload hours that became exportable since the last intraday run into their
    days' partitions (Amplitude serves an hour `availability_delay_hours` after it ends:
    docs/amplitude.md). One export call for all of them, none when no new hour is ready; the
    first run starts at today's first hour. Events a partition holds already (the dedup key)
    are left out, the rest added as one file (canonical.append_new)."""
    state = intraday_state(lake, src.name)
    today = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), UTC)
    start = (
        datetime.strptime(state["next_hour"], "%Y%m%dT%H").replace(tzinfo=UTC)
        if ("next_hour" in state)
        else today
    )
    ready = (now - timedelta(hours=src.availability_delay_hours)).replace(
        minute=0, second=0, microsecond=0
    ) - timedelta(hours=1)
    batch = f"{int(now.timestamp() * 1000)}-{uuid.uuid4().hex[:6]}"
    result = {"source": src.name, "raw": 0, "canonical": 0, "duplicates": 0, "quarantined": 0,
              "added": 0, "held_already": 0, "fetch_retries": 0, "files": []}  # fmt: skip
    with lake.lock(f"events-{src.name}"):
        if ready >= start:
            if budget is not None:
                budget.acquire(max_wait)
            raw_dir = lake.root / "raw" / src.name / "intraday" / f"date={ready:%Y-%m-%d}"
            raw_dir = raw_dir / f"batch-{batch}"
            raw_dir.mkdir(parents=True, exist_ok=True)
            fetches: list[dict] = []
            zips = download(session, base, start, ready, raw_dir, conn_id=src.connection_id,
                            attempts=src.fetch_attempts, sleep=sleep, budget=budget,
                            fetches=fetches)  # fmt: skip
            staged = raw_dir / "_staged"
            staged.mkdir()
            q_dir = lake.root / "quarantine" / src.name / "intraday" / f"batch-{batch}"
            q_dir.mkdir(parents=True, exist_ok=True)
            try:
                counts = to_canonical(zips, staged, q_dir, source=src.name,
                                      email_properties=email_properties,
                                      account_properties=account_properties)  # fmt: skip
                part, per_day = staged / "part-0.parquet", {}
                if part.exists():
                    per_day = append_new(part, lake, src.name, start.date(), ready.date(),
                                         batch, DEDUP_KEY, day_of="received_at",
                                         touched=touched_path(lake, src.name, batch))  # fmt: skip
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            if not any(q_dir.glob("*")):
                shutil.rmtree(q_dir, ignore_errors=True)
            _fail_if_too_bad(counts, src, f"hours {_hour(start)}..{_hour(ready)}", q_dir)
            added = sum(d["added"] for d in per_day.values())
            result.update(counts.as_dict(), added=added, held_already=counts.canonical - added,
                          fetch_retries=sum(f["attempts"] - 1 for f in fetches),
                          hours=[_hour(start), _hour(ready)])  # fmt: skip
            result["files"] = [str(touched_path(lake, src.name, batch))] if added else []
            start = ready + timedelta(hours=1)
        save_intraday_state(lake, src.name, {
            "next_hour": _hour(start), "fetched_at": now.astimezone(UTC).isoformat(),
            "batches": state.get("batches", 0) + 1})  # fmt: skip
    log.info("%s intraday: hours up to %s exportable; %s raw lines, %s new events",
             src.name, _hour(ready), result["raw"], result["added"])  # fmt: skip
    return result
