"""Score every user as of a moment and keep a snapshot per day in the lake."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pandas as pd

from pql import accounts as pqa
from pql import enrich, scoring
from pql.config import Config
from pql.features import user_features
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)

SNAPSHOT_COLUMNS = [
    "user_key",
    "email",
    "account_key",
    "source",
    "first_seen",
    "last_seen",
    "employees",
    "industry",
    "country",
    "revenue_band",
    "plan",
    "days_since_last_seen",
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


def features_at(
    cfg: Config, lake: Lake, as_of, accounts: pd.DataFrame, *, spark_submit=None
) -> pd.DataFrame:
    """Every user's point-in-time features as of `as_of`, with firmographics joined.

    With `features.engine: spark` the same frame comes from Spark: submitted through
    `spark_submit(job)` (features_spark.SparkJob) when `features.spark.submit` is on and one
    is given, else from a SparkSession in this process.
    """
    profiles = str(lake.root / "identity" / "*" / "profiles.parquet")
    has_profiles = any((lake.root / "identity").glob("*/profiles.parquet"))
    if cfg.features.engine == "spark":
        from pql import features_spark

        feats = features_spark.lake_features(
            cfg, lake, as_of, profiles=has_profiles, submit=spark_submit
        )
        return enrich.join(feats, accounts)
    feats = user_features(
        lake.events_glob(),
        as_of,
        cfg.features,
        cfg.identity.free_email_domains,
        profiles=profiles if has_profiles else None,
        model=cfg.model,
    )
    return enrich.join(feats, accounts)


def score_day(cfg: Config, day: date, accounts: pd.DataFrame, *, spark_submit=None) -> dict:
    """Score all users (and accounts) as of the end of `day` (UTC) into scores/date=day."""
    lake = Lake(cfg.lake.root)
    as_of = pd.Timestamp(day + timedelta(days=1), tz="UTC").to_pydatetime()
    feats = features_at(cfg, lake, as_of, accounts, spark_submit=spark_submit)
    scored = pd.concat([feats, scoring.score(feats, cfg, lake.models())], axis=1)
    scored["as_of"] = as_of
    scored["qualified_at"] = _qualified_at(scored, previous_snapshot(lake, day), as_of)
    snapshot = scored[SNAPSHOT_COLUMNS]
    rolled = pqa.rollup(scored, cfg.accounts, cfg.features.active_window_days)
    with atomic_dir(lake.scores(day)) as tmp:
        snapshot.to_parquet(tmp / "scores.parquet", index=False)
        rolled.to_parquet(tmp / "accounts.parquet", index=False)
    flagged = int(snapshot["flag"].sum())
    log.info(
        "scored %s users as of %s with %s: %s PQLs (%.1f%%); %s of %s accounts qualified",
        len(snapshot),
        as_of,
        snapshot["model_version"].iloc[0] if len(snapshot) else cfg.model.version,
        flagged,
        100 * flagged / max(len(snapshot), 1),
        int(rolled["qualified"].sum()),
        len(rolled),
    )
    return {
        "day": day.isoformat(),
        "users": len(snapshot),
        "pqls": flagged,
        "accounts": len(rolled),
        "pqas": int(rolled["qualified"].sum()),
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
