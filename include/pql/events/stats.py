"""Counts for RevOps: canonical events per day and per event, duplicates and quarantined lines."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from pql.lake import Lake


def per_event(root: Path, sources: list[str]) -> pd.DataFrame:
    """Events per source and event name, with users and the first and last time seen."""
    files = _files(Lake(root), sources)
    if not files:
        return pd.DataFrame()
    with duckdb.connect() as con:
        return con.sql(
            "SELECT source, event_name AS event, count(*)::BIGINT AS events, "
            "count(DISTINCT user_key)::BIGINT AS users, min(ts)::VARCHAR AS first_seen, "
            "max(ts)::VARCHAR AS last_seen "
            f"FROM read_parquet({files}, hive_partitioning = false) "
            "GROUP BY ALL ORDER BY source, events DESC"
        ).df()


def per_day(root: Path, sources: list[str]) -> pd.DataFrame:
    """Events per source and export day, with the duplicates, quarantined lines and fetch
    retries of the export that last wrote the day (from its manifest)."""
    lake = Lake(root)
    rows = []
    for src in sources:
        latest: dict[str, dict] = {}
        for _, raw_dir in lake.partitions(f"raw/{src}"):
            manifest = raw_dir / "manifest.json"
            if manifest.exists():
                m = json.loads(manifest.read_text())
                for day in m["per_day"]:
                    latest[day] = m  # later windows rewrite the day: their counts hold
        for day, path in lake.partitions(f"events/source={src}"):
            with duckdb.connect() as con:
                n = con.sql(f"SELECT count(*) FROM read_parquet('{path}/*.parquet')").fetchall()[0][
                    0
                ]
            m = latest.get(day.isoformat(), {})
            rows.append(
                {
                    "source": src,
                    "day": day.isoformat(),
                    "events": int(n),
                    "export": f"{m.get('first', '?')}..{m.get('last', '?')}",
                    "export_duplicates": int(m.get("duplicates", 0)),
                    "export_quarantined": int(m.get("quarantined", 0)),
                    "export_retries": retries(m),
                }
            )
    return pd.DataFrame(rows)


def retries(manifest: dict) -> int:
    """Fetches of an export beyond the first, over its requests (0 for manifests without)."""
    return sum(f["attempts"] - 1 for f in manifest.get("fetches", []))


def retried(root: Path, sources: list[str]) -> list[str]:
    """One line per export whose fetch needed retries: its window and why each try failed."""
    lake = Lake(root)
    lines = []
    for src in sources:
        for _, raw_dir in lake.partitions(f"raw/{src}"):
            manifest = raw_dir / "manifest.json"
            if not manifest.exists():
                continue
            m = json.loads(manifest.read_text())
            for f in m.get("fetches", []):
                if f["faults"]:
                    lines.append(f"{src} {f['window']}: {f['attempts']} attempts ("
                                 + "; ".join(f["faults"]) + ")")  # fmt: skip
    return lines


def _files(lake: Lake, sources: list[str]) -> list[str]:
    return [
        str(f)
        for s in sources
        for _, p in lake.partitions(f"events/source={s}")
        for f in sorted(p.glob("*.parquet"))
    ]
