"""A starting PQL definition for a product, proposed from its own events (`pql init`).

From the canonical events in the lake, and the CRM outcomes where the weekly pulls have some:
every event by volume and by how much more often converters did it before converting than others
ever did (the backtest's signal discovery); a weighted model on the events that separate buyers
best (or, with no outcomes yet, on the mid-frequency events: what some users do and most do
not); the threshold set so the flagged share of users lands in the 5-15% band leaders use; and
the backtest of that proposal. RevOps edits the written file and re-runs `pql backtest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import yaml

from pql.config import Config, EventSignal, WeightedModel
from pql.enrich import firmographics
from pql.lake import Lake
from pql.rates import Rate
from pql.scoring import backtest, datacheck, labels, snapshots, weighted

MAX_SIGNALS = 6
TARGET_SHARE = (0.05, 0.15)  # flagged share of users a useful definition lands in
COMMON = 0.90  # events nearly everyone does (sign-up, login) separate no one
WINDOW_DAYS = 14


@dataclass
class Proposal:
    events: pd.DataFrame  # event, events, users, users_share, converters_share, ...
    basis: str  # "outcomes" or "usage"
    config: Config
    flagged: Rate
    as_of: datetime
    backtest: backtest.Backtest | None
    note: str


def _usage(lake: Lake) -> pd.DataFrame:
    """Per identified user and event: how many times, and the first time."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(
            f"SELECT user_key, event_name, count(*) AS n, min(ts) AS first_at FROM "
            f"read_parquet('{lake.events_glob()}', hive_partitioning = false, "
            "union_by_name = true) WHERE user_key NOT LIKE '$device:%' GROUP BY ALL"
        ).df()


def event_table(cfg: Config, lake: Lake, target: str, as_of: datetime) -> tuple[pd.DataFrame, str]:
    """Every event with its volume, reach and, when outcomes exist, how much more often
    converters did it (before converting) than non-converters ever did."""
    counts = datacheck.event_counts(lake)
    usage = _usage(lake)
    users = snapshots.features_at(cfg, lake, as_of, firmographics.read(lake))[["user_key", "email"]]
    outcomes = labels.first_outcomes(lake)
    col = f"{target}_at"
    users = users.merge(outcomes[["email", col]], on="email", how="left") if len(outcomes) else (
        users.assign(**{col: pd.NaT})
    )  # fmt: skip
    users[col] = pd.to_datetime(users[col], utc=True)
    n_users = max(len(users), 1)
    u = usage.merge(users[["user_key", col]], on="user_key", how="inner")
    u["first_at"] = pd.to_datetime(u["first_at"], utc=True)
    converters = users[users[col].notna()]
    table = pd.DataFrame({"event": list(counts), "events": list(counts.values())})
    reach = u.groupby("event_name")["user_key"].nunique()
    table["users_share"] = table["event"].map(reach).fillna(0) / n_users
    basis = "outcomes" if len(converters) else "usage"
    if len(converters):
        before = u[u[col].notna() & (u["first_at"] < u[col])].groupby("event_name")["user_key"]
        others = u[u[col].isna()].groupby("event_name")["user_key"].nunique()
        table["converters_share"] = table["event"].map(before.nunique()).fillna(0) / len(converters)
        rest = max(n_users - len(converters), 1)
        table["others_share"] = table["event"].map(others).fillna(0) / rest
        table["ratio"] = table["converters_share"] / table["others_share"].clip(lower=0.001)
        table = table.sort_values(["ratio", "events"], ascending=False)
    else:
        table = table.sort_values("events", ascending=False)
    return table.reset_index(drop=True), basis


def _choose(table: pd.DataFrame, basis: str) -> pd.DataFrame:
    """The events to build signals on: those that separate buyers (or, without outcomes, that
    some users do and most do not), never the ones nearly everyone does."""
    candidates = table[(table["users_share"] < COMMON) & (table["users_share"] > 0.005)]
    if basis == "outcomes":
        candidates = candidates[candidates["ratio"] >= 1.5]
    else:  # mid-frequency first: done by 2-60% of users, then by volume
        mid = candidates["users_share"].between(0.02, 0.60)
        candidates = pd.concat([candidates[mid], candidates[~mid]])
    return candidates.head(MAX_SIGNALS)


def _points(row, basis: str) -> float:
    if basis != "outcomes":
        return 10.0
    return float(min(25, max(5, round(10 * math.log2(max(row["ratio"], 1.0))))))


def propose(cfg: Config, *, target: str = "won", weeks: int = 8) -> Proposal:
    """The proposal for the product in `cfg.lake` (its sources, CRM and the rest kept)."""
    from pql import pipeline

    lake = Lake(cfg.lake.root)
    last = pipeline.newest_events_day(cfg)
    as_of = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)
    table, basis = event_table(cfg, lake, target, as_of)
    chosen = _choose(table, basis)
    if chosen.empty:
        raise LookupError(
            f"no event in {lake.root} separates users (all are done by nearly everyone or by "
            "almost no one): extract more days first"
        )
    signals = [
        EventSignal(kind="event", event=r["event"], window_days=WINDOW_DAYS,
                    points_each=_points(r, basis), max_points=3 * _points(r, basis))
        for _, r in chosen.iterrows()
    ]  # fmt: skip
    version = f"proposed-{last:%Y%m%d}"
    features = cfg.features.model_copy(update={"events": list(chosen["event"]), "distinct": []})
    model = WeightedModel(kind="weighted", version=version, threshold=50, signals=signals)
    trial = cfg.model_copy(update={"features": features, "model": model})
    feats = snapshots.features_at(trial, lake, as_of, firmographics.read(lake))
    points = weighted.score(feats, model)["score"]
    threshold, flagged = _threshold(points)
    model = model.model_copy(update={"threshold": float(threshold)})
    proposed = trial.model_copy(update={"model": model})
    low, high = TARGET_SHARE
    note = "" if low <= flagged.value <= high else (
        f"the flagged share {flagged.short()} is outside {low:.0%}-{high:.0%}: scores are too "
        "coarse for a threshold to land there; adjust points or add signals"
    )  # fmt: skip
    first = max(last - timedelta(weeks=weeks), _first_day(lake) + timedelta(days=7))
    bt = None
    if first <= last:
        bt = backtest.run(
            proposed, first, last, firmographics.read(lake), every_days=7, target=target
        )
    return Proposal(table, basis, proposed, flagged, as_of, bt, note)


def _first_day(lake: Lake) -> date:
    """The first day any source has canonical events for."""
    return min(d for src in (lake.root / "events").glob("source=*")
               for d, _ in lake.partitions(f"events/{src.name}"))  # fmt: skip


def _threshold(points: pd.Series) -> tuple[int, Rate]:
    """The lowest score threshold that flags no more than 15% of users (at least 1)."""
    n = len(points)
    for t in range(1, 101):
        k = int((points >= t).sum())
        if k <= TARGET_SHARE[1] * n:
            return t, Rate(k, n)
    return 100, Rate(int((points >= 100).sum()), n)


def write(proposal: Proposal, source: Path, out: Path) -> Path:
    """The user's config file with `features` and `model` replaced by the proposal."""
    doc = yaml.safe_load(source.read_text())
    features = doc.get("features") or {}
    features["events"] = proposal.config.features.events
    features["distinct"] = []
    doc["features"] = features
    doc["model"] = proposal.config.model.model_dump(mode="json", exclude_none=True)
    head = (
        f"# Proposed by `pql init` on {date.today()} from the events up to "
        f"{proposal.as_of:%Y-%m-%d} ({proposal.basis}-based): review the signals and the\n"
        "# threshold, then `pql validate --lake --config <this file>` and `pql backtest`.\n"
    )
    out.write_text(head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return out
