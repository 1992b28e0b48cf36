"""Mixpanel raw export lines → canonical rows, one line at a time: the reference parser.

The pipeline runs `mixpanel_duckdb.to_canonical` (DuckDB, 5-6x faster, flat memory); this path
is the definition it is tested against line for line, and the constants both share.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pql.events import IncompleteExport
from pql.events.canonical import Counts, Quarantine, RowBuffer, finish, first_value

# Mixpanel's own deduplication key (event, distinct_id, time, $insert_id).
DEDUP_KEY = ["event_name", "user_key", "ts", "event_id"]
TRUNCATED_MARKER = "terminated early"
MAX_EPOCH_SECONDS = 4_102_444_800  # 2100-01-01: anything later is a unit or encoding error


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered text lines of a gzip file; a stream that breaks raises IncompleteExport."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        n = 0
        try:
            for n, line in enumerate(f, start=1):  # noqa: B007 (n is used after the loop)
                yield n, line.rstrip("\n")
        except (EOFError, zlib.error, OSError) as e:
            raise IncompleteExport(
                f"{path}: the gzip stream breaks after line {n} ({e}): the raw export is not "
                "whole; extract its window again"
            ) from e


def to_canonical(
    raw_path: Path,
    out_dir: Path,
    quarantine_dir: Path,
    *,
    source: str,
    email_properties: list[str],
    account_properties: list[str],
) -> Counts:
    """Parse a raw export into deduplicated canonical Parquet in `out_dir`; returns the counts.

    The line-by-line reference implementation: the pipeline runs `mixpanel_duckdb.to_canonical`
    (DuckDB, 5-6x faster, flat memory), and the tests check the two agree line for line.
    """
    counts = Counts()
    staged = out_dir / "_staged.parquet"
    rows = RowBuffer(staged)
    quarantine = Quarantine(quarantine_dir / "lines.jsonl.gz", counts)
    received = datetime.now(UTC)
    try:
        for line_no, line in read_lines(raw_path):
            if not line.strip():
                continue
            if line == TRUNCATED_MARKER:
                raise IncompleteExport(f"{raw_path}: export ends with '{TRUNCATED_MARKER}'")
            counts.raw += 1
            row, reason = parse_line(line, source, email_properties, account_properties, received)
            if row is None:
                quarantine.add(line_no, reason, line)
            else:
                rows.append(row)
    finally:
        rows.close()
        quarantine.close()
    return finish(staged, out_dir / "part-0.parquet", counts, DEDUP_KEY)


def parse_line(line, source, email_properties, account_properties, received):
    """One export line → (canonical row, None) or (None, reason it was quarantined)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "not valid JSON"
    if not isinstance(obj, dict) or not isinstance(obj.get("properties"), dict):
        return None, "no 'properties' object"
    name, props = obj.get("event"), dict(obj["properties"])
    if not isinstance(name, str) or not name:
        return None, "missing event name"
    t = props.pop("time", None)
    if isinstance(t, bool) or not isinstance(t, int | float):
        return None, "missing or non-numeric 'time'"
    user = props.pop("distinct_id", None)
    if not isinstance(user, str | int) or user == "":
        return None, "missing distinct_id"
    seconds = t / 1000 if t > 10_000_000_000 else t  # time_in_ms exports
    if not 0 <= seconds < MAX_EPOCH_SECONDS:
        return None, "time out of range"
    insert_id = props.pop("$insert_id", None)
    processed = props.get("mp_processing_time_ms")
    return {
        "source": source,
        "event_id": str(insert_id) if insert_id else _content_id(name, user, t, props),
        "event_name": name,
        "user_key": str(user),
        "device_id": _str(props.get("$device_id")),
        "email": first_value([props], email_properties, lower=True),
        "account_key": first_value([props], account_properties),
        "ts": datetime.fromtimestamp(seconds, UTC),
        "received_at": datetime.fromtimestamp(processed / 1000, UTC)
        if _plausible_ms(processed)
        else received,
        "properties": json.dumps(props, separators=(",", ":"), ensure_ascii=False),
    }, None


def _plausible_ms(v) -> bool:
    return (
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v / 1000 < MAX_EPOCH_SECONDS
    )


def _content_id(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _str(v) -> str | None:
    return None if v is None or v == "" else str(v)
