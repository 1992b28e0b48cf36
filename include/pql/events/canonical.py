"""The canonical event table every source is converted to, and how a partition is written."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pql.lake import Lake, atomic_dir, atomic_file

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("event_id", pa.string()),
        ("event_name", pa.string()),
        ("user_key", pa.string()),
        ("device_id", pa.string()),
        ("email", pa.string()),
        ("account_key", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("properties", pa.string()),
    ]
)
BATCH_ROWS = 50_000


@dataclass
class Counts:
    """Where every raw line went: raw = canonical + duplicates + quarantined."""

    raw: int = 0
    canonical: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        if self.raw != self.canonical + self.duplicates + self.quarantined:
            raise AssertionError(f"lines lost: {self}")

    def as_dict(self) -> dict:
        return {
            "raw": self.raw,
            "canonical": self.canonical,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
        }


class RowBuffer:
    """Collects canonical rows column-wise and flushes them to a Parquet file in batches."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.writer: pq.ParquetWriter | None = None

    def append(self, row: dict) -> None:
        for name, values in self.columns.items():
            values.append(row[name])
        if len(self.columns["event_id"]) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.columns["event_id"] and self.writer is not None:
            return
        table = pa.Table.from_pydict(self.columns, schema=SCHEMA)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self.writer.write_table(table)
        for values in self.columns.values():
            values.clear()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()


class Quarantine:
    """Lines that could not become events, kept whole with their line number and reason."""

    def __init__(self, path: Path, counts: Counts):
        self.path, self.counts, self._f = path, counts, None

    def add(self, line_no: int, reason: str, line: str) -> None:
        if self._f is None:
            self._f = gzip.open(self.path, "wt", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._f.write(json.dumps({"line": line_no, "reason": reason, "raw": line}) + "\n")
        self.counts.quarantined += 1
        self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def finish(staged: Path, out: Path, counts: Counts, key: list[str]) -> Counts:
    """Deduplicate the staged rows into `out` and complete the counts (checked to reconcile)."""
    staged_rows = counts.raw - counts.quarantined
    if staged_rows:
        counts.canonical = dedupe(staged, out, key)
    staged.unlink(missing_ok=True)
    counts.duplicates = staged_rows - counts.canonical
    counts.check()
    return counts


def first_value(dicts: list[dict], keys: list[str], lower: bool = False) -> str | None:
    """The first non-empty string/number under `keys` (lists give their first item)."""
    for key in keys:
        for d in dicts:
            v = d.get(key)
            if isinstance(v, list):
                v = v[0] if v else None
            if isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip():
                v = str(v).strip()
                return v.lower() if lower else v
    return None


def dedupe(staged: Path, out: Path, key: list[str]) -> int:
    """Write `staged` to `out` keeping one row per key (the latest received); returns rows kept."""
    cols = ", ".join(key)
    con = duckdb.connect()
    try:
        con.execute(
            f"""COPY (SELECT * FROM read_parquet('{staged}', hive_partitioning = false)
                      QUALIFY row_number() OVER (PARTITION BY {cols}
                                                 ORDER BY received_at DESC, event_id) = 1
                      ORDER BY ts)
                TO '{out}' (FORMAT parquet, COMPRESSION zstd)"""
        )
        return con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    finally:
        con.close()


def split_by_day(
    staged: Path,
    lake: Lake,
    source: str,
    first: date,
    last: date,
    *,
    day_of: str = "ts",
    local_zone: str | None = None,
) -> dict[date, int]:
    """Write staged canonical events into one partition per export day, first..last.

    Each day's partition is replaced whole (an empty file for a day without events), so
    re-exporting a window never counts an event twice. `day_of` names the column whose
    calendar day is the export day: the event time for Mixpanel (project days), the upload
    time for Amplitude (upload hours). With `local_zone`, `ts` holds wall-clock time in that
    zone (Mixpanel projects created before 2023) and is converted to UTC.
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = f"read_parquet('{staged}', hive_partitioning = false)" if staged.exists() else None
        ts = f"timezone('{local_zone}', CAST(ts AS TIMESTAMP))" if local_zone else "ts"
        day_expr = f"CAST({day_of} AS DATE)"
        if rel:
            outside = con.execute(
                f"SELECT count(*) FROM {rel} WHERE {day_expr} NOT BETWEEN ? AND ?", [first, last]
            ).fetchall()[0][0]
            if outside:
                raise ValueError(
                    f"{outside} exported events fall outside {first}..{last}: check "
                    "the source's time settings (time_mode, project_timezone)"
                )
        per_day, day = {}, first
        while day <= last:
            with atomic_dir(lake.events(source, day)) as tmp:
                out = tmp / "part-0.parquet"
                if rel:
                    con.execute(
                        f"""COPY (SELECT * REPLACE ({ts} AS ts) FROM {rel}
                                          WHERE {day_expr} = ? ORDER BY ts)
                                    TO '{out}' (FORMAT parquet, COMPRESSION zstd)""",
                        [day],
                    )
                    per_day[day] = pq.read_metadata(out).num_rows
                else:
                    pq.write_table(SCHEMA.empty_table(), out)
                    per_day[day] = 0
            day += timedelta(days=1)
        return per_day
    finally:
        con.close()


INTRADAY_PREFIX = "intraday-"


def touched_path(lake: Lake, source: str, batch: str) -> Path:
    """Where an intraday batch notes the users (and devices) it brought events for, until a
    rescoring has taken them (pipeline.rescore_fresh)."""
    return lake.live() / "touched" / f"{source}-{batch}.parquet"


def intraday_state_path(lake: Lake, source: str) -> Path:
    """Where a source's intraday state (its watermark) is kept."""
    return lake.live() / "sources" / f"{source}.json"


def intraday_state(lake: Lake, source: str) -> dict:
    """A source's intraday state: its watermark (Mixpanel: watermark_ms, the newest processing
    time fetched; Amplitude: next_hour, the first upload hour not fetched yet), fetched_at
    (when the last intraday run asked) and batches; {} before the first run."""
    path = intraday_state_path(lake, source)
    return json.loads(path.read_text()) if path.exists() else {}


def save_intraday_state(lake: Lake, source: str, state: dict) -> None:
    with atomic_file(intraday_state_path(lake, source), "w") as f:
        f.write(json.dumps(state, indent=2))


def append_new(
    staged: Path,
    lake: Lake,
    source: str,
    first: date,
    last: date,
    batch: str,
    key: list[str],
    *,
    day_of: str = "ts",
    local_zone: str | None = None,
    touched: Path | None = None,
) -> dict[date, dict[str, int]]:
    """Add the staged events that a day's partition does not hold yet, as one more file.

    An intraday run's batch overlaps what earlier batches brought (the export is asked again a
    little before its watermark): events whose `key` the partition holds are left out, the
    rest land in `intraday-<batch>.parquet`, renamed into place whole, so readers never see
    half a file and the daily run can still replace the partition whole. Returns, per day,
    the events `added` and those `held` already. `touched`: where to write the added events'
    user_key and device_id (what the scoring of touched users reads: the partition's files
    may be merged before it runs).
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = f"read_parquet('{staged}', hive_partitioning = false)"
        ts = f"timezone('{local_zone}', CAST(ts AS TIMESTAMP))" if local_zone else "ts"
        on = " AND ".join(f"n.{k} IS NOT DISTINCT FROM o.{k}" for k in key)
        out, day, keys = {}, first, []
        while day <= last:
            part = lake.events(source, day)
            part.mkdir(parents=True, exist_ok=True)
            new = f"(SELECT * REPLACE ({ts} AS ts) FROM {rel} WHERE CAST({day_of} AS DATE) = ?)"
            held = [str(p) for p in sorted(part.glob("*.parquet"))]
            query = f"SELECT * FROM {new} n"
            if held:
                old = f"read_parquet({held!r}, hive_partitioning = false, union_by_name = true)"
                query += f" WHERE NOT EXISTS (SELECT 1 FROM {old} o WHERE {on})"
            total = con.execute(f"SELECT count(*) FROM {new}", [day]).fetchone()[0]
            tmp = part / f".tmp-{INTRADAY_PREFIX}{batch}"
            con.execute(
                f"COPY ({query} ORDER BY ts) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)", [day]
            )
            added = pq.read_metadata(tmp).num_rows
            if added:
                keys.append(con.sql(
                    f"SELECT DISTINCT user_key, device_id FROM read_parquet('{tmp}')"
                ).to_arrow_table())  # fmt: skip
                os.replace(tmp, part / f"{INTRADAY_PREFIX}{batch}.parquet")
                _compact(con, part, batch)
            else:
                tmp.unlink()
            out[day] = {"added": added, "held": total - added}
            day += timedelta(days=1)
        if touched is not None and keys:
            with atomic_file(touched) as f:
                pq.write_table(pa.concat_tables(keys), f)
        return out
    finally:
        con.close()


#: More intraday files than this in a partition are merged into one: readers open every file
#: of the lake on each run, and a day of 5-minute batches is 288 of them.
MAX_INTRADAY_FILES = 12


def _compact(con: duckdb.DuckDBPyConnection, part: Path, batch: str) -> None:
    """Merge a partition's intraday files into one, swapping the partition whole (readers see
    the files before or after, never both)."""
    files = sorted(part.glob(f"{INTRADAY_PREFIX}*.parquet"))
    if len(files) <= MAX_INTRADAY_FILES:
        return
    with atomic_dir(part) as tmp:
        for f in part.glob("*.parquet"):
            if not f.name.startswith(INTRADAY_PREFIX):
                os.link(f, tmp / f.name)  # the daily file, as it is
        merged = tmp / f"{INTRADAY_PREFIX}{batch}-merged.parquet"
        con.execute(
            f"COPY (SELECT * FROM read_parquet({[str(f) for f in files]!r}, "
            f"hive_partitioning = false) ORDER BY ts) TO '{merged}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )


def reconcile(
    staged: Path,
    lake: Lake,
    source: str,
    day: date,
    key: list[str],
    *,
    day_of: str = "ts",
    local_zone: str | None = None,
) -> dict | None:
    """How a day's intraday batches compare with its daily export (`staged`, as append_new):
    the intraday events, how many the daily export holds, and the daily events no batch
    brought (late arrivals). None when the day had no intraday batch."""
    files = sorted(lake.events(source, day).glob(f"{INTRADAY_PREFIX}*.parquet"))
    if not files:
        return None
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        fresh = f"read_parquet({[str(f) for f in files]!r}, hive_partitioning = false)"
        ts = f"timezone('{local_zone}', CAST(ts AS TIMESTAMP))" if local_zone else "ts"
        rel = f"read_parquet('{staged}', hive_partitioning = false)"
        on_day = f"CAST({day_of} AS DATE) = DATE '{day}'"
        daily = f"(SELECT * REPLACE ({ts} AS ts) FROM {rel} WHERE {on_day})"
        on = " AND ".join(f"f.{k} IS NOT DISTINCT FROM d.{k}" for k in key)
        found = f"EXISTS (SELECT 1 FROM {daily} d WHERE {on})"
        n_fresh, in_daily = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {found}) FROM {fresh} f"
        ).fetchone()
        n_daily = con.execute(f"SELECT count(*) FROM {daily}").fetchone()[0]
        return {
            "intraday_files": len(files),
            "intraday_events": n_fresh,
            "in_daily": in_daily,
            "not_in_daily": n_fresh - in_daily,
            "daily_events": n_daily,
            "daily_only": n_daily - in_daily,
        }
    finally:
        con.close()
