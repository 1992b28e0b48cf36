"""Mixpanel raw export → raw file in the lake → canonical events (one UTC day per partition).

Long because it holds both ways of asking for a project's events: the daily window, each day
replaced whole, and the intraday batch added since a watermark (README, "Speed to lead").
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import requests

from pql import http
from pql.config import MixpanelSource
from pql.events import ExportError, IncompleteExport, mixpanel_duckdb
from pql.events.canonical import (
    Counts,
    append_new,
    intraday_state,
    reconcile,
    save_intraday_state,
    split_by_day,
    touched_path,
)
from pql.events.mixpanel_lines import TRUNCATED_MARKER
from pql.http import Budget, CredentialsError, transient
from pql.lake import Lake, atomic_dir

__all__ = ["CredentialsError", "ExportError", "IncompleteExport", "extract_window"]

log = logging.getLogger(__name__)

HOSTS = {
    "us": "https://data.mixpanel.com",
    "eu": "https://data-eu.mixpanel.com",
    "in": "https://data-in.mixpanel.com",
}


@dataclass(frozen=True)
class ExportRequest:
    """One export call: project days `first`..`last`, both inclusive (Mixpanel's semantics)."""

    project_id: int
    first: date
    last: date
    base_url: str  # e.g. https://data.mixpanel.com, or the sandbox
    where: str | None = None  # Mixpanel's segmentation expression (docs/mixpanel.md §3)

    def params(self) -> dict:
        params = {
            "project_id": self.project_id,
            "from_date": self.first.isoformat(),
            "to_date": self.last.isoformat(),
        }
        if self.where:
            params["where"] = self.where
        return params


def base_url(residency: str, host: str | None = None) -> str:
    """The export host: the connection's host when set (sandbox, proxy), else by residency."""
    return host.rstrip("/") if host else HOSTS[residency]


def download(
    session: requests.Session,
    req: ExportRequest,
    dest: Path,
    *,
    conn_id: str = "mixpanel_default",
    timezone: str = "UTC",
    attempts: int = 6,
    sleep: Callable[[float], None] = time.sleep,
    budget: Budget | None = None,
) -> http.Download:
    """Stream one export to `dest` (gzip, as received); returns how the fetch went.

    429, 5xx, connection errors and bodies that did not arrive whole (cut, reset, a broken
    gzip stream, Mixpanel's 'terminated early') are fetched again with backoff; a body is
    never kept unless it is whole.
    """
    got = http.download(
        session,
        f"{req.base_url}/api/2.0/export",
        dest,
        window=f"Mixpanel export {req.first}..{req.last} of project {req.project_id}"
        + (f" where {req.where}" if req.where else ""),
        attempts=attempts,
        check=ExportBody,
        sleep=sleep,
        budget=budget,
        params=req.params(),
        timeout=(10, 600),
        headers={"Accept-Encoding": "gzip"},
    )
    status, body = got.status, got.text
    if status == 200:
        if got.headers.get("Content-Encoding", "").lower() != "gzip":
            _compress(dest)  # the lake keeps every raw export gzipped
        return got
    if status in (401, 403):
        raise CredentialsError(
            f"Mixpanel refused the credentials of connection {conn_id!r} ({status}: {body}). "
            "Check its service-account username/secret and that the account may read project "
            f"{req.project_id}."
        )
    if status == 400 and "later than today" in body:
        raise ExportError(
            f"Mixpanel refused to_date {req.last} ({body}): it is later than today in the "
            f"project's timezone. The config says project_timezone {timezone!r}: check that it "
            "matches Project Settings → Overview in Mixpanel (a project created before 2023 "
            "counts its days in that zone), and that this machine's clock is right."
        )
    if transient(status):
        raise ExportError(f"Mixpanel export kept failing with {status}: {body}")
    raise ExportError(f"Mixpanel rejected the export request ({status}): {body}")


class ExportBody:
    """Whether an export body arrived whole: a gzip body must end with its last member's
    checksum, a plain body sent without a length must not end in the middle of a line, and
    neither may end with Mixpanel's own 'terminated early' line."""

    def __init__(self, headers) -> None:
        self.gzip = (
            http.GzipCheck() if headers.get("Content-Encoding", "").lower() == "gzip" else None
        )
        self.framed = (
            "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        )
        self.tail = b""  # a plain body: its end, from the start of its last line on
        self.cut_line = False

    def feed(self, chunk: bytes) -> None:
        if self.gzip:
            self.gzip.feed(chunk)
            return
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            self.tail = chunk[nl + 1 :] if nl + 1 < len(chunk) else chunk[-256:]
        elif len(self.tail) <= MAX_TAIL:
            self.tail += chunk

    def finish(self, path: Path) -> None:
        if self.gzip:
            self.gzip.finish(path)
        tail = self.gzip.tail if self.gzip else self.tail
        last = tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
        if last.strip() == TRUNCATED_MARKER.encode():
            raise IncompleteExport(f"Mixpanel ended the export with '{TRUNCATED_MARKER}'")
        if self.gzip or self.framed or not tail or tail.endswith(b"\n"):
            return
        try:  # a body without a length ends with the connection: a cut may fall inside a line
            json.loads(last)
        except ValueError:
            raise IncompleteExport(
                "the connection closed in the middle of a line (the body had no length)"
            ) from None


MAX_TAIL = 1 << 20


def _compress(path: Path) -> None:
    tmp = path.with_name(path.name + ".gz-tmp")
    with open(path, "rb") as src, gzip.open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.replace(path)


def extract_window(
    session: requests.Session,
    lake: Lake,
    src: MixpanelSource,
    *,
    base: str,
    first: date,
    last: date,
    email_properties: list[str],
    account_properties: list[str],
    sleep: Callable[[float], None] = time.sleep,
    budget: Budget | None = None,
) -> dict:
    """Export project days first..last in one call and replace each day's partition atomically.

    One call per window keeps within Mixpanel's 60 queries/hour. Canonical partitions are the
    project's export days, each rewritten whole from the latest export, so re-running a
    window (or overlapping windows: the look-back) never counts an event twice and picks up
    events that arrived late. `budget`, when given, is spent by every fetch, retries
    included. Returns counts and paths (small enough for an XCom).
    """
    req = ExportRequest(project_id=src.project_id, first=first, last=last, base_url=base)
    # An intraday run adding to one of these days waits, and so do we for one under way.
    with lake.lock(f"events-{src.name}"), \
         atomic_dir(lake.raw(src.name, last)) as raw_dir, \
         atomic_dir(lake.quarantine(src.name, last)) as q_dir:  # fmt: skip
        raw_path = raw_dir / f"export_{first:%Y-%m-%d}_{last:%Y-%m-%d}.jsonl.gz"
        got = download(
            session,
            req,
            raw_path,
            conn_id=src.connection_id,
            timezone=src.project_timezone,
            attempts=src.fetch_attempts,
            sleep=sleep,
            budget=budget,
        )
        size = got.size
        staged = raw_dir / "_staged"
        staged.mkdir()
        counts = mixpanel_duckdb.to_canonical(
            raw_path,
            staged,
            q_dir,
            source=src.name,
            email_properties=email_properties,
            account_properties=account_properties,
        )
        zone = src.project_timezone if src.local_time else None
        # Before the partitions are replaced: what the intraday batches had, against the day.
        intraday = _reconciled(staged / "part-0.parquet", lake, src.name, first, last, zone)
        per_day = split_by_day(
            staged / "part-0.parquet",
            lake,
            src.name,
            first,
            last,
            day_of="ts",
            local_zone=zone,
        )
        shutil.rmtree(staged)
        manifest = {
            "source": src.name,
            "first": first.isoformat(),
            "last": last.isoformat(),
            **counts.as_dict(),
            "reasons": counts.reasons,
            "raw_bytes": size,
            "fetches": [got.record(f"{first}..{last}")],
            "per_day": {d.isoformat(): n for d, n in per_day.items()},
        }
        if intraday:
            manifest["intraday"] = intraday
        (raw_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for d in intraday:  # the daily export supersedes those days' intraday raw batches
            shutil.rmtree(lake.root / "raw" / src.name / "intraday" / f"date={d}", True)
    log.info(
        "%s %s..%s: %s raw lines = %s canonical + %s duplicates + %s quarantined (%s bytes, "
        "fetched in %s attempt(s))",
        src.name,
        first,
        last,
        counts.raw,
        counts.canonical,
        counts.duplicates,
        counts.quarantined,
        size,
        got.attempts,
    )
    # Checked after the partitions are in place, so the quarantined lines are kept for inspection.
    _fail_if_too_bad(counts, src.bad_line_threshold, lake.quarantine(src.name, last), last)
    return {
        "first": first.isoformat(),
        "last": last.isoformat(),
        **counts.as_dict(),
        "raw_bytes": size,
        "fetch_retries": got.attempts - 1,
        "raw_path": str(lake.raw(src.name, last)),
    }


def _reconciled(
    staged: Path, lake: Lake, source: str, first: date, last: date, zone: str | None
) -> dict[str, dict]:
    """Per day that had intraday batches: how they compare with the daily export."""
    out, day = {}, first
    while day <= last:
        if staged.exists() and (got := reconcile(staged, lake, source, day, KEY, local_zone=zone)):
            out[day.isoformat()] = got
            if got["not_in_daily"]:
                log.warning(
                    "%s %s: %s of %s intraday events are not in the daily export (their "
                    "distinct_id changed since, e.g. an identified device): the daily one holds",
                    source, day, got["not_in_daily"], got["intraday_events"],
                )  # fmt: skip
        day += timedelta(days=1)
    return out


def _fail_if_too_bad(counts: Counts, threshold: float, q_dir: Path, day: date) -> None:
    if counts.raw and counts.quarantined / counts.raw > threshold:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(counts.reasons.items()))
        raise ExportError(
            f"export ending {day}: {counts.quarantined} of {counts.raw} lines could not be parsed "
            f"({counts.quarantined / counts.raw:.1%} > bad_line_threshold {threshold:.1%}); "
            f"reasons: {reasons}. The lines are kept in {q_dir}: fix the tracking or raise the "
            "threshold, then re-run the day."
        )


#: The dedup key of canonical Mixpanel events (docs/mixpanel.md §7), as canonical columns.
KEY = ["event_name", "user_key", "ts", "event_id"]


def extract_fresh(
    session: requests.Session,
    lake: Lake,
    src: MixpanelSource,
    *,
    base: str,
    now: datetime,
    overlap: timedelta,
    email_properties: list[str],
    account_properties: list[str],
    budget: Budget | None = None,
    max_wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Bring the events Mixpanel processed since the last intraday run into today's partition.

    One export of the project days from the watermark's day (at least yesterday) to today,
    filtered with `where` on mp_processing_time_ms from the watermark minus `overlap`
    (docs/mixpanel.md §3, §5): what earlier batches brought is left out by the dedup key, the
    rest is added to each day's partition as one file (canonical.append_new). The first run
    asks for all of today. Late events of older days are the daily run's look-back. Returns
    counts, the new watermark and the batch's files (for the scoring of touched users).
    """
    state = intraday_state(lake, src.name)
    zone = ZoneInfo(src.project_timezone if src.local_time else "UTC")
    today = now.astimezone(zone).date()
    mark = state.get("watermark_ms")
    if mark is None:
        first, where = today, None
    else:
        since = mark - int(overlap.total_seconds() * 1000)
        since_day = datetime.fromtimestamp(since / 1000, UTC).astimezone(zone).date()
        first = min(today, max(since_day, today - timedelta(days=1)))
        where = f'properties["mp_processing_time_ms"] >= {since}'
    batch = f"{int(now.timestamp() * 1000)}-{uuid.uuid4().hex[:6]}"  # unique, in time order
    req = ExportRequest(src.project_id, first, today, base, where=where)
    with lake.lock(f"events-{src.name}"):
        if budget is not None:
            budget.acquire(max_wait)
        raw_dir = lake.root / "raw" / src.name / "intraday" / f"date={today:%Y-%m-%d}"
        raw_dir.mkdir(parents=True, exist_ok=True)
        raw_path = raw_dir / f"batch-{batch}.jsonl.gz"
        got = download(session, req, raw_path, conn_id=src.connection_id,
                       timezone=src.project_timezone, attempts=src.fetch_attempts,
                       sleep=sleep, budget=budget)  # fmt: skip
        staged = raw_dir / f"_staged-{batch}"
        q_dir = lake.root / "quarantine" / src.name / "intraday" / f"batch-{batch}"
        try:
            counts = mixpanel_duckdb.to_canonical(
                raw_path,
                staged,
                q_dir,
                source=src.name,
                email_properties=email_properties,
                account_properties=account_properties,
            )
            part = staged / "part-0.parquet"
            per_day, newest = {}, mark
            if part.exists():
                per_day = append_new(
                    part, lake, src.name, first, today, batch, KEY,
                    local_zone=src.project_timezone if src.local_time else None,
                    touched=touched_path(lake, src.name, batch),
                )  # fmt: skip
                newest = _newest_processing_ms(part, mark)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        if not any(q_dir.glob("*")):
            shutil.rmtree(q_dir, ignore_errors=True)
        _fail_if_too_bad(counts, src.bad_line_threshold, q_dir, today)
        added = sum(d["added"] for d in per_day.values())
        files = [str(touched_path(lake, src.name, batch))] if added else []
        new_state = {
            "watermark_ms": newest,
            "fetched_at": now.astimezone(UTC).isoformat(),
            "last_batch": batch,
            "batches": state.get("batches", 0) + 1,
        }
        save_intraday_state(lake, src.name, new_state)
    log.info(
        "%s intraday %s..%s%s: %s raw lines = %s canonical (%s new, %s held already) + %s "
        "duplicates + %s quarantined; watermark %s",
        src.name, first, today, f" where {where}" if where else "", counts.raw,
        counts.canonical, added, counts.canonical - added, counts.duplicates,
        counts.quarantined, newest,
    )  # fmt: skip
    return {
        "source": src.name,
        "first": first.isoformat(),
        "last": today.isoformat(),
        **counts.as_dict(),
        "added": added,
        "held_already": counts.canonical - added,
        "fetch_retries": got.attempts - 1,
        "watermark_ms": newest,
        "files": files,
    }


def _newest_processing_ms(part: Path, mark: int | None) -> int | None:
    """The newest received_at (Mixpanel's processing time) in a staged batch, in ms."""
    newest = pq.read_table(part, columns=["received_at"]).column(0)
    top = pa.compute.max(newest).as_py()
    if top is None:
        return mark
    ms = int(top.timestamp() * 1000)
    return ms if mark is None else max(ms, mark)
