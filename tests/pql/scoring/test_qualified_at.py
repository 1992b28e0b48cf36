"""qualified_at is the moment a user qualified (the crossing event + 1 µs), not the next midnight.

Hand-made events pin the cases (an event in the morning, the day's last and first event, an
anonymous device merged into the user, an earlier qualification kept, scores that rose without an
event); a generated world checks, for every new PQL of several days and three model kinds, that a
full rescore flags the user as of qualified_at and not as of the event's own ts.
"""

from __future__ import annotations

import glob
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pql import config, scoring
from pql.enrich import firmographics
from pql.events.canonical import SCHEMA
from pql.lake import Lake, atomic_dir
from pql.scoring import features, snapshots, training
from sandbox import lakegen, world

ROOT = Path(__file__).resolve().parents[3]
US, DAY = timedelta(microseconds=1), timedelta(days=1)
FRI, SAT, SUN = date(2026, 10, 9), date(2026, 10, 10), date(2026, 10, 11)
CORE = "Core Feature Used"
THRESHOLD = config.ThresholdModel.model_validate(
    {"kind": "threshold", "version": "t",
     "rules": [{"feature": "core_feature_used_7d", "at_least": 3}]}
)  # fmt: skip


def _cfg(root: Path, model=THRESHOLD) -> config.Config:
    base = config.load(ROOT / "config" / "pql.yaml")
    return base.model_copy(update={"lake": config.LakeSettings(root=root), "model": model})


def _t(day: date, hh: int, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, us, tzinfo=UTC)


def _row(user: str, name: str, ts: datetime, **kw) -> dict:
    return {
        "source": "crafted",
        "event_id": f"{user}-{name}-{ts.isoformat()}",
        "event_name": name,
        "user_key": user,
        "device_id": kw.get("device_id"),
        "email": kw.get("email"),
        "account_key": None,
        "ts": ts,
        "received_at": ts,
        "properties": "{}",
    }


def _lake(root: Path, rows: list[dict]) -> Lake:
    lake = Lake(root)
    for day in sorted({r["ts"].date() for r in rows}):
        with atomic_dir(lake.events("crafted", day)) as tmp:
            part = [r for r in rows if r["ts"].date() == day]
            pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), tmp / "part-0.parquet")
    return lake


def _score(cfg: config.Config, days: list[date], accounts=None) -> dict[date, pd.DataFrame]:
    """Run score_day for each day in turn; each day's snapshot by user_key."""
    out = {}
    for day in days:
        acc = firmographics.read(Lake(cfg.lake.root)) if accounts is None else accounts[day]
        snapshots.score_day(cfg, day, acc)
        snap = pd.read_parquet(Lake(cfg.lake.root).scores(day) / "scores.parquet")
        out[day] = snap.set_index("user_key")
    return out


def _flagged_as_of(cfg: config.Config, moment, accounts: pd.DataFrame) -> set[str]:
    """Who a full rescore of the lake as of `moment` flags."""
    lake = Lake(cfg.lake.root)
    feats = snapshots.features_at(cfg, lake, pd.Timestamp(moment).to_pydatetime(), accounts)
    flags = scoring.score(feats, cfg, lake.models())["flag"].to_numpy(bool)
    return set(feats.loc[flags, "user_key"])


def _monday(t: pd.Timestamp) -> date:
    d = t.tz_convert("UTC").date()
    return d - timedelta(days=d.weekday())


def test_qualified_at_is_the_crossing_event_not_the_next_midnight(tmp_path):
    rows = [
        # The third use in 7 days is on Sunday at 10:03: not Monday 00:00, not next week.
        _row("sun", CORE, _t(SAT, 9)),
        _row("sun", CORE, _t(SUN, 8)),
        _row("sun", CORE, _t(SUN, 10, 3)),
        _row("sun", CORE, _t(SUN, 15)),
        # On the day's last event; on its first (at midnight, the previous run's moment).
        _row("late", CORE, _t(SUN, 21)),
        _row("late", CORE, _t(SUN, 22)),
        _row("late", CORE, _t(SUN, 23, 58, 59, 999_998)),
        _row("early", CORE, _t(SAT, 20)),
        _row("early", CORE, _t(SAT, 21)),
        _row("early", CORE, _t(SUN, 0)),
        _row("early", CORE, _t(SUN, 9)),
        _row("never", CORE, _t(SUN, 9)),
    ]
    cfg = _cfg(_lake(tmp_path, rows).root)
    snaps = _score(cfg, [SAT, SUN])
    assert not snaps[SAT]["flag"].any() and snaps[SAT]["qualified_at"].isna().all()
    sun = snaps[SUN]
    assert sun.loc["sun", "qualified_at"] == pd.Timestamp(_t(SUN, 10, 3) + US)
    assert sun.loc["late", "qualified_at"] == pd.Timestamp(_t(SUN, 23, 58, 59, 999_999))
    assert sun.loc["early", "qualified_at"] == pd.Timestamp(_t(SUN, 0) + US)
    assert pd.isna(sun.loc["never", "qualified_at"])
    assert (sun.loc[["sun", "late", "early"], "as_of"] == pd.Timestamp(_t(SUN, 0) + DAY)).all()
    # That week's cohort, and a meeting booked on Sunday afternoon comes after qualifying.
    assert _monday(sun.loc["sun", "qualified_at"]) == date(2026, 10, 5)
    assert _monday(sun.loc["late", "qualified_at"]) == date(2026, 10, 5)
    assert sun.loc["sun", "qualified_at"] < pd.Timestamp(_t(SUN, 14))
    # What a full rescore at those moments says.
    accounts = firmographics.read(Lake(tmp_path))
    for user in ("sun", "late", "early"):
        at = sun.loc[user, "qualified_at"]
        assert user in _flagged_as_of(cfg, at, accounts)
        assert user not in _flagged_as_of(cfg, at - US, accounts)


def test_events_of_an_anonymous_device_merged_into_the_user_count(tmp_path):
    rows = [
        # Identified on Saturday; later anonymous use of the same device is hers.
        _row("ana", "Signed Up", _t(SAT, 9), device_id="d1", email="ana@acme.io"),
        _row("$device:d1", CORE, _t(SAT, 10), device_id="d1"),
        _row("$device:d1", CORE, _t(SUN, 9), device_id="d1"),
        _row("$device:d1", CORE, _t(SUN, 11, 30), device_id="d1"),
        _row("ana", "Logged In", _t(SUN, 12), device_id="d1"),
        # Anonymous use first: it becomes his when the device is identified as his (12:00).
        _row("$device:d2", CORE, _t(SUN, 8), device_id="d2"),
        _row("$device:d2", CORE, _t(SUN, 8, 30), device_id="d2"),
        _row("$device:d2", CORE, _t(SUN, 9), device_id="d2"),
        _row("bo", "Signed Up", _t(SUN, 12), device_id="d2", email="bo@beta.dev"),
        # A device identified as cy, then as dee: what it does after that is dee's.
        _row("cy", CORE, _t(SUN, 7), device_id="d3"),
        _row("cy", CORE, _t(SUN, 7, 30), device_id="d3"),
        _row("dee", "Signed Up", _t(SUN, 8), device_id="d3"),
        _row("$device:d3", CORE, _t(SUN, 9), device_id="d3"),
        _row("$device:d3", CORE, _t(SUN, 10), device_id="d3"),
        _row("$device:d3", CORE, _t(SUN, 11), device_id="d3"),
    ]
    cfg = _cfg(_lake(tmp_path, rows).root)
    sun = _score(cfg, [SAT, SUN])[SUN]
    assert sun.loc["ana", "qualified_at"] == pd.Timestamp(_t(SUN, 11, 30) + US)
    assert sun.loc["bo", "qualified_at"] == pd.Timestamp(_t(SUN, 12) + US)
    assert sun.loc["dee", "qualified_at"] == pd.Timestamp(_t(SUN, 11) + US)
    assert not sun.loc["cy", "flag"]
    accounts = firmographics.read(Lake(tmp_path))
    for user in ("ana", "bo", "dee"):
        at = sun.loc[user, "qualified_at"]
        assert user in _flagged_as_of(cfg, at, accounts)
        assert user not in _flagged_as_of(cfg, at - US, accounts)


def test_an_earlier_qualification_is_kept(tmp_path):
    oct2 = date(2026, 10, 2)
    rows = [_row("old", CORE, _t(FRI, h)) for h in (10, 11, 12, 13)]
    rows += [_row("old", CORE, _t(d, 10)) for d in (SAT, SUN)]
    # Qualified on Oct 2, dropped out of the 7-day window, qualified again on Sunday.
    rows += [_row("back", CORE, _t(oct2, h)) for h in (10, 11, 12)]
    rows += [_row("back", CORE, _t(SUN, h)) for h in (10, 11, 12)]
    cfg = _cfg(_lake(tmp_path, rows).root)
    snaps = _score(cfg, [oct2, FRI, SAT, SUN])
    assert snaps[oct2].loc["back", "qualified_at"] == pd.Timestamp(_t(oct2, 12) + US)
    assert snaps[FRI].loc["old", "qualified_at"] == pd.Timestamp(_t(FRI, 12) + US)
    assert not snaps[FRI].loc["back", "flag"] and not snaps[SAT].loc["back", "flag"]
    for day in (SAT, SUN):
        assert snaps[day].loc["old", "qualified_at"] == pd.Timestamp(_t(FRI, 12) + US)
        assert snaps[day].loc["back", "qualified_at"] == pd.Timestamp(_t(oct2, 12) + US)
    # Asked over all of history, the search finds the first crossing, not a later one.
    lake = Lake(tmp_path)
    candidates = pd.DataFrame(
        {"user_key": ["back", "old"], "after": pd.NaT, "before": pd.Timestamp(_t(SUN, 23))}
    )
    found = snapshots.qualifying_moments(cfg, lake, firmographics.read(lake), candidates, probes=1)
    assert found.to_dict() == {
        "back": pd.Timestamp(_t(oct2, 12) + US),
        "old": pd.Timestamp(_t(FRI, 12) + US),
    }


def test_a_score_that_rose_without_an_event_keeps_the_runs_moment(tmp_path):
    weighted = config.WeightedModel.model_validate(
        {"kind": "weighted", "version": "w", "threshold": 60, "signals": [
            {"kind": "event", "event": CORE, "window_days": 7, "points_each": 10},
            {"kind": "firmographic", "field": "employees", "at_least": 100, "points": 50}]}
    )  # fmt: skip
    rows = [
        _row("firm", CORE, _t(SAT, 10), email="a@big.io"),
        _row("firm", CORE, _t(SUN, 10), email="a@big.io"),
        _row("quiet", CORE, _t(SAT, 9), email="b@big.io"),
        _row("quiet", CORE, _t(SAT, 9, 30), email="b@big.io"),
        _row("usual", CORE, _t(SUN, 9), email="c@small.io"),
        *[_row("usual", CORE, _t(SUN, 9, m), email="c@small.io") for m in range(1, 6)],
    ]
    cfg = _cfg(_lake(tmp_path, rows).root, weighted)
    # Enrichment learned on Sunday that big.io is big: the score rose with no event of theirs.
    none = firmographics.normalise(pd.DataFrame({"domain": ["small.io"], "employees": [5]}))
    big = firmographics.normalise(
        pd.DataFrame({"domain": ["big.io", "small.io"], "employees": [500, 5]})
    )
    sun = _score(cfg, [SAT, SUN], {SAT: none, SUN: big})[SUN]
    monday = pd.Timestamp(_t(SUN, 0) + DAY)
    assert sun.loc["firm", "flag"] and sun.loc["firm", "qualified_at"] == monday
    assert sun.loc["quiet", "flag"] and sun.loc["quiet", "qualified_at"] == monday
    assert sun.loc["usual", "qualified_at"] == pd.Timestamp(_t(SUN, 9, 5) + US)

    # A model whose features drift with time: a day after first seen, without an event.
    aged = config.ThresholdModel.model_validate(
        {"kind": "threshold", "version": "a", "rules": [
            {"feature": "core_feature_used_7d", "at_least": 1},
            {"feature": "days_since_first_seen", "at_least": 1}]}
    )  # fmt: skip
    rows = [_row("aging", CORE, _t(SAT, 10)), _row("aging", CORE, _t(SUN, 12))]
    lake = _lake(tmp_path / "aged", rows)
    candidates = pd.DataFrame(
        {"user_key": ["aging"], "after": pd.Timestamp(_t(SUN, 0)), "before": monday}
    )
    found = snapshots.qualifying_moments(_cfg(lake.root, aged), lake, none, candidates)
    assert found.to_dict() == {"aging": monday}  # flagged from 10:00, no event then


def test_features_of_some_users_are_their_rows_of_the_whole_frame(tmp_path):
    """user_features(users=...), at many moments at once, and from UserEvents read once."""
    spec = world.WorldSpec(seed=8, start=date(2026, 9, 3), days=40, users=200, accounts=40)
    lake = Lake(tmp_path)
    lakegen.write(spec, lake)
    crafted = [
        _row("cy", CORE, _t(SUN, 7), device_id="d3", email="cy@acme.io"),
        _row("$device:d3", CORE, _t(SUN, 7, 10), device_id="d3"),  # cy's, until 08:00
        _row("dee", "Signed Up", _t(SUN, 8), device_id="d3"),
        _row("$device:d3", "Pricing Page Viewed", _t(SUN, 9), device_id="d3"),
    ]
    with atomic_dir(lake.events("crafted", SUN)) as tmp:
        pq.write_table(pa.Table.from_pylist(crafted, schema=SCHEMA), tmp / "part-0.parquet")
    cfg = _cfg(tmp_path, config.load(ROOT / "config" / "pql.yaml").model)
    free, events = cfg.identity.free_email_domains, lake.events_glob()
    moments = [_t(SUN, 7, 20), _t(SUN, 8, 30), spec.end - DAY, spec.end]
    whole = {m: features.user_features(events, m, cfg.features, free, model=cfg.model)
             for m in moments}  # fmt: skip
    users = ["cy", "u_0000003", "u_0000050", "u_0000150", "nobody"]
    for m, frame in whole.items():
        mine = features.user_features(events, m, cfg.features, free, model=cfg.model, users=users)
        expected = frame[frame["user_key"].isin(users)].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, expected)
    pairs = pd.DataFrame([(u, m) for u in users for m in moments], columns=["user_key", "as_of"])
    at_once = features.user_features(events, pairs, cfg.features, free, model=cfg.model)
    with features.UserEvents(events, users, spec.end, cfg.features, cfg.model) as ev:
        read_once = ev.features(pairs, free)
        some = ev.features(spec.end, free, users=["cy"], columns={"s0", "active_days_7d"})
    for got in (at_once, read_once):
        for m, frame in whole.items():
            part = got[got["as_of"] == pd.Timestamp(m)].drop(columns="as_of")
            expected = frame[frame["user_key"].isin(users)].reset_index(drop=True)
            pd.testing.assert_frame_equal(part.reset_index(drop=True), expected)
    cy = at_once.set_index(["user_key", "as_of"])
    assert cy.loc[("cy", pd.Timestamp(_t(SUN, 7, 20))), "core_feature_used_7d"] == 2
    assert cy.loc[("cy", pd.Timestamp(_t(SUN, 8, 30))), "core_feature_used_7d"] == 1
    assert not (at_once["user_key"] == "dee").any() and not (at_once["user_key"] == "nobody").any()
    # Only some aggregates: the same values, the identity columns all there.
    cy_end = whole[spec.end].set_index("user_key").loc[["cy"], some.columns[1:]]
    assert "core_feature_used_7d" not in some and "days_since_first_seen" in some
    pd.testing.assert_frame_equal(some.set_index("user_key"), cy_end)
    assert features.user_features(events, spec.end, cfg.features, free, users=[]).empty


# --- the equality property on a generated world --------------------------------------------

SPEC = world.WorldSpec(seed=31, start=date(2026, 3, 2), days=42, users=800, accounts=150)
DAYS = [SPEC.end.date() - timedelta(days=k) for k in (5, 4, 3, 2, 1)]  # the first: no snapshot


@pytest.fixture(scope="module")
def world_lake(tmp_path_factory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("world"))
    lakegen.write(SPEC, lake)
    return lake


def _model(kind: str, lake: Lake):
    if kind == "weighted":
        return config.load(ROOT / "config" / "pql.yaml").model
    if kind == "threshold":
        return config.load(ROOT / "config" / "examples" / "threshold.yaml").model
    model = config.PredictiveModel.model_validate(
        {"kind": "predictive", "target": "meeting", "horizon_days": 7, "threshold": 0.04,
         "training_days": 35, "holdout_days": 7, "sample_every_days": 3}
    )  # fmt: skip
    until = datetime.combine(DAYS[0], datetime.min.time(), UTC)
    assert training.train(_cfg(lake.root, model), until, firmographics.read(lake))["promoted"]
    return model


@pytest.mark.parametrize("kind", ["threshold", "weighted", "predictive"])
def test_a_rescore_at_qualified_at_flags_and_just_before_does_not(world_lake, tmp_path, kind):
    shutil.copytree(world_lake.root, tmp_path / "lake")
    lake = Lake(tmp_path / "lake")
    cfg = _cfg(lake.root, _model(kind, lake))
    accounts = firmographics.read(lake)
    snaps = _score(cfg, DAYS)
    previous, at_event = None, 0
    for day in DAYS:
        snap = snaps[day]
        as_of = snap["as_of"].iloc[0]
        after = None if previous is None else previous["as_of"].iloc[0]
        new = snap[snap["flag"]]
        if previous is not None:  # who qualified before keeps their moment
            kept = snap.index.intersection(previous.index[previous["qualified_at"].notna()])
            assert snap.loc[kept, "qualified_at"].equals(previous.loc[kept, "qualified_at"])
            new = new.drop(kept, errors="ignore")
            assert (new["qualified_at"] > after).all()
        assert (new["qualified_at"] <= as_of).all()
        found = new[new["qualified_at"] < as_of]  # the rest: no event moment crossed
        at_event += len(found)
        # Every one as of its moment and just before (the event's ts), and a few moments by a
        # full rescore of the lake, as the daily run would have scored then.
        moments = pd.concat([found["qualified_at"], found["qualified_at"] - US])
        flags = _flags_at(cfg, lake, accounts, moments)
        assert flags.iloc[: len(found)].all() and not flags.iloc[len(found) :].any()
        for moment, group in list(found.groupby("qualified_at"))[:3]:
            assert set(group.index) <= _flagged_as_of(cfg, moment, accounts)
            assert not set(group.index) & _flagged_as_of(cfg, moment - US, accounts)
        _no_earlier_moment_flags(cfg, lake, accounts, found, after)
        previous = snap
    assert at_event >= 10


def _flags_at(cfg, lake: Lake, accounts, moments: pd.Series) -> pd.Series:
    """Is each user (index) flagged as of their moment, by the whole lake's frame (no search)?"""
    pairs = pd.DataFrame({"user_key": moments.index, "as_of": moments.to_numpy()})
    free = cfg.identity.free_email_domains
    feats = features.user_features(lake.events_glob(), pairs, cfg.features, free, model=cfg.model)
    flags = scoring.score(firmographics.join(feats, accounts), cfg, lake.models())["flag"].to_numpy(
        bool
    )
    got = pd.Series(flags, index=pd.MultiIndex.from_frame(feats[["user_key", "as_of"]]))
    return got.reindex(pd.MultiIndex.from_frame(pairs), fill_value=False)


def _no_earlier_moment_flags(cfg, lake: Lake, accounts, new: pd.DataFrame, after) -> None:
    """No event moment of theirs in the span before the one found flags them: the earliest."""
    files = sorted(glob.glob(lake.events_glob()))
    ev = pa.concat_tables(pq.read_table(f, columns=["user_key", "ts"]) for f in files).to_pandas()
    ev = ev[ev["user_key"].isin(new.index)]
    ev = ev[ev["ts"] + US < ev["user_key"].map(new["qualified_at"])]
    if after is not None:
        ev = ev[ev["ts"] >= after]
    if ev.empty:
        return
    flags = _flags_at(cfg, lake, accounts, pd.Series((ev["ts"] + US).to_numpy(), ev["user_key"]))
    assert not flags.any(), flags[flags]
