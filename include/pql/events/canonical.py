"""The canonical event table every source is converted to, and how a partition is written."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

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
