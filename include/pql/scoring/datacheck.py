"""The config against the data: names a model relies on that the product never sends.

A signal on "Dashboard built" where the export says "Dashboard Built" validates as config and then
never matches; a distinct-values feature on a property the event does not carry is always 0. These
checks read the canonical events in the lake and say so, with the nearest names that do occur.
"""

from __future__ import annotations

import difflib
import glob
import logging
from datetime import datetime

import duckdb
import pandas as pd

from pql.config import Config
from pql.lake import Lake

log = logging.getLogger(__name__)
PROPERTY_DAYS = 30  # property names are read from the newest days only (they are many)


def _events(lake: Lake, days: int | None = None) -> str | None:
    """A DuckDB relation of the canonical events (all days, or the newest `days` per source)."""
    files = sorted(glob.glob(lake.events_glob()))
    if not files:
        return None
    if days:
        by_day = sorted({f.split("date=")[1][:10] for f in files})[-days:]
        files = [f for f in files if f.split("date=")[1][:10] in by_day]
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"


def event_counts(lake: Lake) -> dict[str, int]:
    """Every event name in the lake with how many canonical events carry it."""
    rel = _events(lake)
    if rel is None:
        return {}
    with duckdb.connect() as con:
        rows = con.sql(f"SELECT event_name, count(*) FROM {rel} GROUP BY 1").fetchall()
    return {name: int(n) for name, n in rows}


def property_counts(lake: Lake, event: str) -> dict[str, int]:
    """The property names of `event` (newest days) with how many events carry each."""
    rel = _events(lake, PROPERTY_DAYS)
    if rel is None:
        return {}
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT key, count(*) FROM (SELECT unnest(json_keys(properties)) AS key FROM {rel} "
            "WHERE event_name = ?) GROUP BY 1",
            [event],
        ).fetchall()
    return {k: int(n) for k, n in rows}


def nearest(name: str, counts: dict[str, int], n: int = 3) -> list[str]:
    """The names in `counts` most like `name` (case ignored first), most events first."""
    lower = {k.lower(): k for k in counts}
    exact = [lower[name.lower()]] if name.lower() in lower else []
    close = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    found = list(dict.fromkeys(exact + [lower[c] for c in close]))
    return sorted(found, key=lambda k: (-counts[k], k))[:n]


def _suggest(name: str, counts: dict[str, int]) -> str:
    near = nearest(name, counts)
    if not near:
        top = sorted(counts, key=lambda k: (-counts[k], k))[:12]
        more = f" (and {len(counts) - len(top)} more)" if len(counts) > len(top) else ""
        return "; there are " + ", ".join(f"{k!r} ({counts[k]:,})" for k in top) + more
    return "; did you mean " + " or ".join(f"{k!r} ({counts[k]:,} events)" for k in near) + "?"


def unseen_names(cfg: Config, lake: Lake) -> list[str]:
    """A message for every event or event property the config names that the lake never holds."""
    counts = event_counts(lake)
    if not counts:
        return [f"no canonical events under {lake.root}: run an extract first"]
    total = sum(counts.values())
    out = []
    for i, e in enumerate(cfg.features.events):
        if e not in counts:
            out.append(f"features.events[{i}] {e!r}: never seen in {total:,} events"
                       + _suggest(e, counts))  # fmt: skip
    for i, d in enumerate(cfg.features.distinct):
        where = f"features.distinct[{i}] ({d.name})"
        if d.event not in counts:
            out.append(f"{where} event {d.event!r}: never seen in {total:,} events"
                       + _suggest(d.event, counts))  # fmt: skip
            continue
        props = property_counts(lake, d.event)
        if d.property not in props:
            out.append(f"{where} property {d.property!r}: {d.event!r} never carries it (last "
                       f"{PROPERTY_DAYS} days)" + _suggest(d.property, props))  # fmt: skip
    return out


def dead_features(features: pd.DataFrame, names: list[str], as_of: datetime) -> list[str]:
    """A message for every numeric catalogue feature that is 0 (or missing) for every user."""
    out = []
    for name in names:
        if name not in features.columns or not pd.api.types.is_numeric_dtype(features[name]):
            continue
        if name.startswith("days_since_") or name == "free_email":
            continue
        if not features[name].fillna(0).astype(float).ne(0).any():
            out.append(
                f"feature {name!r} is 0 for all {len(features):,} users as of "
                f"{as_of:%Y-%m-%d %H:%M} UTC: a rule or signal on it never fires"
            )
    return out


def check(cfg: Config, lake: Lake, features: pd.DataFrame | None, as_of: datetime) -> list[str]:
    """Every problem between the config and the lake's data (empty when none)."""
    out = unseen_names(cfg, lake)
    if features is not None and len(features):
        out += dead_features(features, cfg.features.names(), as_of)
    return out
