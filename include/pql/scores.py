"""Score every user as of a moment and keep a snapshot per day in the lake."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pandas as pd

from pql import enrich
from pql.config import Config
from pql.features import user_features
from pql.lake import Lake, atomic_dir
from pql.scoring import weighted

log = logging.getLogger(__name__)

SNAPSHOT_COLUMNS = [
    "user_key",
    "email",
    "account_key",
    "first_seen",
    "last_seen",
    "employees",
    "industry",
    "score",
    "flag",
    "qualified_at",
    "reasons",
    "model_version",
    "as_of",
]


def previous_snapshot(lake: Lake, before: date) -> pd.DataFrame | None:
    """The latest scores snapshot strictly before `before`, if any."""
    older = [p for d, p in lake.partitions("scores") if d < before]
    return pd.read_parquet(older[-1] / "scores.parquet") if older else None


def score_day(cfg: Config, day: date, accounts: pd.DataFrame) -> dict:
    """Score all users as of the end of `day` (UTC) and write scores/date=day atomically."""
    lake = Lake(cfg.lake.root)
    as_of = pd.Timestamp(day + timedelta(days=1), tz="UTC").to_pydatetime()
    profiles = str(lake.root / "identity" / "*" / "profiles.parquet")
    has_profiles = any((lake.root / "identity").glob("*/profiles.parquet"))
    feats = user_features(
        lake.events_glob(),
        as_of,
        cfg.model,
        cfg.identity.free_email_domains,
        profiles=profiles if has_profiles else None,
    )
    feats = enrich.join(feats, accounts)
    scored = pd.concat([feats, weighted.score(feats, cfg.model)], axis=1)
    scored["as_of"] = as_of
    scored["qualified_at"] = _qualified_at(scored, previous_snapshot(lake, day), as_of)
    snapshot = scored[SNAPSHOT_COLUMNS]
    with atomic_dir(lake.scores(day)) as tmp:
        snapshot.to_parquet(tmp / "scores.parquet", index=False)
    flagged = int(snapshot["flag"].sum())
    log.info(
        "scored %s users as of %s: %s PQLs (%.1f%%)",
        len(snapshot),
        as_of,
        flagged,
        100 * flagged / max(len(snapshot), 1),
    )
    return {
        "day": day.isoformat(),
        "users": len(snapshot),
        "pqls": flagged,
        "scores_path": str(lake.scores(day) / "scores.parquet"),
    }


def _qualified_at(scored: pd.DataFrame, previous: pd.DataFrame | None, as_of) -> pd.Series:
    """The first moment a user was seen qualified: kept once set, set now for new PQLs."""
    now = pd.Series(pd.NaT, index=scored.index, dtype="datetime64[us, UTC]")
    now[scored["flag"]] = pd.Timestamp(as_of)
    if previous is None:
        return now
    before = scored["user_key"].map(previous.set_index("user_key")["qualified_at"])
    return before.fillna(now).astype("datetime64[us, UTC]")
