"""Score every user as of a moment and keep a snapshot per day in the lake.

Long because it holds what the daily and the intraday scoring share: the snapshot, the view
of every user's latest row over it, and the exact search for the moment a user qualified.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from pql import scoring
from pql.config import Config, PredictiveModel, ThresholdModel, WeightedModel
from pql.enrich import firmographics
from pql.lake import Lake, atomic_dir
from pql.scoring import accounts as pqa
from pql.scoring.features import DEVICE, UserEvents, signal_column, user_features

log = logging.getLogger(__name__)

# Moments tried per user in the first round of qualifying_moments (twice as many each next
# round): a day's new PQLs rarely have more events in the day, so a run asks once.
PROBES = 16
DEVICE_PREFIX = DEVICE.rstrip("%")

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


def _profiles(lake: Lake) -> str | None:
    """The glob of the identity profiles, if the lake has any."""
    if any((lake.root / "identity").glob("*/profiles.parquet")):
        return str(lake.root / "identity" / "*" / "profiles.parquet")
    return None


def features_at(
    cfg: Config,
    lake: Lake,
    as_of,
    accounts: pd.DataFrame,
    *,
    spark_submit=None,
    users: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every user's point-in-time features as of `as_of`, with firmographics joined (only the
    rows of `users`, if given: the same as in the whole frame, computed from their events).

    With `features.engine: spark` the same frame comes from Spark: submitted through
    `spark_submit(job)` (features_spark.SparkJob) when `features.spark.submit` is on and one
    is given, else from a SparkSession in this process.
    """
    profiles = _profiles(lake)
    if cfg.features.engine == "spark":
        from pql.scoring import features_spark

        feats = features_spark.lake_features(
            cfg, lake, as_of, profiles=profiles is not None, submit=spark_submit, users=users
        )
        return firmographics.join(feats, accounts)
    feats = user_features(
        lake.events_glob(),
        as_of,
        cfg.features,
        cfg.identity.free_email_domains,
        profiles=profiles,
        model=cfg.model,
        users=users,
    )
    return firmographics.join(feats, accounts)


def live_rows(lake: Lake, *, filters=None, columns=None) -> pd.DataFrame | None:
    """The users the intraday runs rescored since the latest snapshot (each as of its own
    `as_of`), if any (README, "Speed to lead")."""
    path = lake.live() / "scores.parquet"
    return pd.read_parquet(path, filters=filters, columns=columns) if path.exists() else None


def snapshot_as_of(day: date) -> pd.Timestamp:
    """The moment a day's snapshot scores as of: the end of the day."""
    return pd.Timestamp(day + timedelta(days=1), tz="UTC")


def view(
    lake: Lake,
    before: date | None = None,
    *,
    until=None,
    where: tuple[str, Sequence[str]] | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame | None:
    """Every user's latest scores: the latest snapshot (strictly before `before`, if given)
    with the rows the intraday runs rescored after it (up to `until`, if given) in place of
    theirs. None when there is neither. `where` (column, values) and `columns` read only
    those rows and columns (an intraday run reads its touched users, not everyone)."""
    snaps = [(d, p) for d, p in lake.partitions("scores") if before is None or d < before]
    filters = [(where[0], "in", list(where[1]))] if where else None
    if columns is not None:
        columns = list(dict.fromkeys(["user_key", "as_of", *columns]))
    base = None
    if snaps:
        base = pd.read_parquet(snaps[-1][1] / "scores.parquet", filters=filters, columns=columns)
    live = live_rows(lake, filters=filters, columns=columns)
    if live is not None:
        keep = pd.Series(True, index=live.index)
        if snaps:
            keep &= live["as_of"] > snapshot_as_of(snaps[-1][0])
        if until is not None:
            keep &= live["as_of"] <= pd.Timestamp(until)
        live = live[keep]
    if live is None or live.empty:
        return base
    if base is None:
        return live.reset_index(drop=True)
    rest = base[~base["user_key"].isin(live["user_key"])]
    return pd.concat([rest, live[base.columns]], ignore_index=True)


def score_users(
    cfg: Config,
    lake: Lake,
    as_of,
    accounts: pd.DataFrame,
    previous: pd.DataFrame | None,
    *,
    users: Sequence[str] | None = None,
    since=None,
    spark_submit=None,
) -> pd.DataFrame:
    """Scores as of `as_of` of every user (or of `users`: the same rows as in the whole
    frame), with qualified_at against `previous` (each user's last scores): kept once set; a
    new PQL's is the moment they crossed the line since their previous row's as_of, or since
    `since` (default: the earliest as_of in `previous`) for a user it has no row of."""
    feats = features_at(cfg, lake, as_of, accounts, spark_submit=spark_submit, users=users)
    scored = pd.concat([feats, scoring.score(feats, cfg, lake.models())], axis=1)
    scored["as_of"] = as_of
    moments = qualifying_moments(cfg, lake, accounts, _candidates(scored, previous, as_of, since))
    scored["qualified_at"] = _qualified_at(scored, previous, as_of, moments)
    return scored


def score_day(cfg: Config, day: date, accounts: pd.DataFrame, *, spark_submit=None) -> dict:
    """Score all users (and accounts) as of the end of `day` (UTC) into scores/date=day.

    A new PQL's qualified_at is the moment they qualified since their previous scores (the
    previous snapshot, or an intraday run's row before the end of the day)
    (`qualifying_moments`), else the end of the day; once set it is kept.
    """
    lake = Lake(cfg.lake.root)
    as_of = pd.Timestamp(day + timedelta(days=1), tz="UTC").to_pydatetime()
    previous = view(lake, day, until=as_of)
    scored = score_users(cfg, lake, as_of, accounts, previous, spark_submit=spark_submit)
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


def _candidates(
    scored: pd.DataFrame, previous: pd.DataFrame | None, as_of, since=None
) -> pd.DataFrame:
    """New PQLs (flagged, not qualified in their previous row) with the span to search: since
    their previous row's as_of, else since `since` or the previous rows' earliest as_of (a
    user first seen since), NaT (the beginning of time) when there are none."""
    new = scored["flag"].astype(bool)
    after = pd.Series(pd.NaT, index=scored.index, dtype="datetime64[us, UTC]")
    if since is not None:
        after[:] = pd.Timestamp(since)
    if previous is not None and len(previous):
        known = previous.loc[previous["qualified_at"].notna(), "user_key"]
        new &= ~scored["user_key"].isin(known)
        last = pd.to_datetime(previous.set_index("user_key")["as_of"], utc=True)
        seen = scored["user_key"].map(last).astype("datetime64[us, UTC]")
        after = seen.fillna(pd.Timestamp(since) if since is not None else last.min())
    return pd.DataFrame(
        {
            "user_key": scored.loc[new, "user_key"],
            "after": after[new],
            "before": pd.Timestamp(as_of),
        }
    ).reset_index(drop=True)


def qualifying_moments(
    cfg: Config,
    lake: Lake,
    accounts: pd.DataFrame,
    candidates: pd.DataFrame,
    *,
    probes: int = PROBES,
) -> pd.Series:
    """When each candidate qualified: user_key → the earliest of their event moments in
    (after, before] at which scoring as of it flags them, as a full rescore would.

    `candidates`: user_key, after (NaT: the beginning of time) and before; users flagged as of
    `before`. An event's moment is its ts + 1 µs (features read events strictly before as_of);
    their events count and those of devices identified as theirs. As of the moment found they
    are flagged, as of the event's ts not. When no event moment is such a crossing (the score
    rose without an event: an enrichment change, a model whose features drift with time, or
    late events qualified them before `after`) the moment is `before`.

    The candidates' events are read once (features.UserEvents), then rounds score (user,
    moment) pairs in time order, `probes` moments a user first, twice as many each next round,
    until one flags: the work grows with the candidates and their moments up to the one found,
    not with all users. On DuckDB whatever the engine (the same frame as Spark's).
    """
    started = time.perf_counter()
    cand = candidates.drop_duplicates("user_key").set_index("user_key")
    before = pd.to_datetime(cand["before"], utc=True).astype("datetime64[us, UTC]")
    out = before.rename("qualified_at")
    if cand.empty:
        return out
    users, reads = list(cand.index), _reads(cfg, lake)
    with UserEvents(lake.events_glob(), users, before.max(), cfg.features, cfg.model) as events:
        times = _event_times(events.table(), cand)
        search = _Search(times, probes)
        while asked := search.next_round():
            search.learn(asked, _flagged(cfg, lake, accounts, events, asked, reads))
    found = search.found()
    for u, moment in found.items():
        out[u] = pd.Timestamp(moment, unit="us", tz="UTC")
    log.info(
        "qualified_at of %s new PQLs: %s at an event, %s at the end of their span "
        "(%s rounds, %s moments, %.2f s)",
        len(out),
        len(found),
        len(out) - len(found),
        search.rounds,
        sum(len(t) for t in times.values()),
        time.perf_counter() - started,
    )
    return out


class _Search:
    """Per user, the earliest of their moments (event time + 1 µs, in time order) at which
    they are flagged: the first `first` at once, then twice as many a round. Exact whatever
    the flag does between events; the work grows with the moments up to the one found."""

    def __init__(self, times: dict[str, np.ndarray], first: int):
        self.times, self.size = times, first
        self.start = dict.fromkeys(times, 0)  # the moments before this one do not flag
        self.hit: dict[str, int] = {}  # the first moment that flags
        self.flags: dict[tuple[str, int], bool] = {}  # (user, µs) → flagged as of it
        self.tried: dict[str, range] = {}  # this round's moments, per user
        self.rounds = 0

    def next_round(self) -> list[tuple[str, int]]:
        """The (user, µs) moments to score next; none when every search is over."""
        asked, self.tried = [], {}
        for u, t in self.times.items():
            if u in self.hit:  # as of the event's own ts too: was it the crossing?
                if (u, t[self.hit[u]]) not in self.flags:
                    asked.append((u, t[self.hit[u]]))
            elif self.start[u] < len(t):
                tried = range(self.start[u], min(self.start[u] + self.size, len(t)))
                asked += [(u, t[i] + 1) for i in tried]
                if not self.rounds:  # most searches end in one round: ask both at once
                    asked += [(u, t[i]) for i in tried]
                self.tried[u] = tried
        self.size *= 2
        self.rounds += bool(asked)
        return asked

    def learn(self, asked: list[tuple[str, int]], flags: np.ndarray) -> None:
        self.flags.update(zip(asked, flags.tolist(), strict=True))
        for u, tried in self.tried.items():
            t = self.times[u]
            first = next((i for i in tried if self.flags[u, t[i] + 1]), None)
            if first is None:
                self.start[u] = tried.stop
            else:
                self.hit[u] = first

    def found(self) -> dict[str, int]:
        """user → their first flagged moment (µs) if, as of the event's own ts, they were not
        flagged: a crossing at that event."""
        out = {}
        for u, i in self.hit.items():
            ts = self.times[u][i]
            if self.flags.get((u, ts)) is False:
                out[u] = ts + 1
        return out


def _flagged(
    cfg: Config,
    lake: Lake,
    accounts: pd.DataFrame,
    events: UserEvents,
    asked: list[tuple[str, int]],
    reads: set[str] | None,
) -> np.ndarray:
    """Is each user flagged as of each moment (µs), as a full rescore then would say? Only
    the aggregates the model `reads` are computed: the rest cannot change a flag."""
    pairs = pd.DataFrame(
        {
            "user_key": [u for u, _ in asked],
            "as_of": pd.to_datetime([t for _, t in asked], unit="us", utc=True),
        }
    )
    free = cfg.identity.free_email_domains
    feats = events.features(pairs, free, profiles=_profiles(lake), columns=reads)
    flags = scoring.score(firmographics.join(feats, accounts), cfg, lake.models())["flag"]
    keys = pd.MultiIndex.from_frame(feats[["user_key", "as_of"]])
    got = pd.Series(flags.to_numpy(bool), index=keys)
    # No row: not seen as a user yet, so not flagged.
    return got.reindex(pd.MultiIndex.from_frame(pairs), fill_value=False).to_numpy(bool)


def _reads(cfg: Config, lake: Lake) -> set[str] | None:
    """The feature columns the configured model reads (None: all of them)."""
    model = cfg.model
    if isinstance(model, WeightedModel):
        return {f"{signal_column(i)}{n}" for i in range(len(model.signals)) for n in ("", "_n")}
    if isinstance(model, ThresholdModel):
        return {r.feature for r in model.rules}
    if isinstance(model, PredictiveModel):
        from pql.scoring import predictive

        return set(predictive.load(lake.models()).features)
    return None


def _event_times(events: pa.Table, cand: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each candidate's distinct event times (µs) in [after, before): their own events and
    the anonymous ones of devices they were identified on (a superset of what can raise their
    score: a moment that changes nothing only costs a probe)."""
    ev = events.select(["user_key", "device_id", "ts"]).to_pandas()
    mine = ev[ev["user_key"].isin(cand.index)]
    own = mine[["user_key", "device_id"]].dropna().drop_duplicates()
    anonymous = ev[ev["user_key"].str.startswith(DEVICE_PREFIX, na=False)]
    merged = anonymous[["device_id", "ts"]].merge(own, on="device_id")
    theirs = pd.concat([mine[["user_key", "ts"]], merged[["user_key", "ts"]]])
    ts = theirs["ts"].astype("datetime64[us, UTC]")
    after = theirs["user_key"].map(pd.to_datetime(cand["after"], utc=True))
    before = theirs["user_key"].map(pd.to_datetime(cand["before"], utc=True))
    theirs = theirs.assign(us=ts.astype("int64"))[(after.isna() | (ts >= after)) & (ts < before)]
    times = {u: np.array([], dtype=np.int64) for u in cand.index}
    for u, t in theirs.groupby("user_key")["us"]:
        times[u] = np.unique(t.to_numpy(np.int64))
    return times


def _qualified_at(
    scored: pd.DataFrame,
    previous: pd.DataFrame | None,
    as_of,
    moments: pd.Series | None = None,
) -> pd.Series:
    """The first moment a user was seen qualified: kept once set; for new PQLs their moment in
    `moments` (user_key → moment), else `as_of`."""
    now = pd.Series(pd.NaT, index=scored.index, dtype="datetime64[us, UTC]")
    now[scored["flag"]] = pd.Timestamp(as_of)
    if moments is not None and len(moments):
        found = scored["user_key"].map(moments).astype("datetime64[us, UTC]")
        now = now.where(~(scored["flag"] & found.notna()), found)
    if previous is None:
        return now
    before = scored["user_key"].map(previous.set_index("user_key")["qualified_at"])
    return before.fillna(now).astype("datetime64[us, UTC]")
