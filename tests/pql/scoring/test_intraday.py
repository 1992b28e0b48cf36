"""Intraday rescoring equals a full rescore: at many random moments of a day, the users a batch
of new events touched get exactly the rows a full rescore of everyone gives them then, and a
new PQL's qualified_at is the event with which they crossed the line."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pql import config
from pql.enrich import firmographics
from pql.events.canonical import INTRADAY_PREFIX, SCHEMA
from pql.lake import Lake, atomic_dir
from pql.scoring import intraday, snapshots
from sandbox import lakegen, world

ROOT = Path(__file__).resolve().parents[3]
US = timedelta(microseconds=1)
COMPARED = ["score", "flag", "reasons", "qualified_at", "email", "account_key", "last_seen"]
THRESHOLD = {"kind": "threshold", "version": "t",
             "rules": [{"feature": "core_feature_used_7d", "at_least": 4}]}  # fmt: skip


def _cfg(root: Path, model=None) -> config.Config:
    base = config.load(ROOT / "config" / "pql.yaml")
    update = {"lake": config.LakeSettings(root=root)}
    if model:
        update["model"] = config.ThresholdModel.model_validate(model)
    return base.model_copy(update=update)


CORE = "Core Feature Used"


def _event(user: str, name: str, ts: pd.Timestamp, device: str, email: str | None = None):
    return {"source": "crafted", "event_id": f"{user}-{ts.value}", "event_name": name,
            "user_key": user, "device_id": device, "email": email, "account_key": None,
            "ts": ts, "received_at": ts, "properties": "{}"}  # fmt: skip


def _held_back(lake: Lake, day: date) -> pd.DataFrame:
    """The day's events, taken out of the lake (the intraday runs bring them back)."""
    part = lake.events("mixpanel", day)
    events = pd.read_parquet(part)
    with atomic_dir(part) as tmp:
        pq.write_table(SCHEMA.empty_table(), tmp / "part-0.parquet")
    return events


def _land(lake: Lake, day: date, batch: pd.DataFrame, n: int) -> str:
    path = lake.events("mixpanel", day) / f"{INTRADAY_PREFIX}{n}.parquet"
    pq.write_table(pa.Table.from_pandas(batch[SCHEMA.names], schema=SCHEMA, preserve_index=False),
                   path)  # fmt: skip
    return str(path)


@pytest.mark.parametrize("model", [None, THRESHOLD], ids=["weighted", "threshold"])
def test_intraday_rows_equal_a_full_rescore_at_random_moments(tmp_path, model):
    spec = world.WorldSpec(seed=11, start=date(2026, 9, 1), days=30, users=400, accounts=60)
    lake = Lake(tmp_path)
    lakegen.write(spec, lake)
    cfg = _cfg(tmp_path, model)
    accounts = firmographics.read(lake)
    day = spec.start + timedelta(days=spec.days - 1)
    events = _held_back(lake, day)
    # Dee used the product anonymously on a device she was identified on; today a newcomer is
    # identified on it: its anonymous events are his now, and Dee's score falls without an
    # event of hers in the batch.
    t0 = pd.Timestamp(datetime.combine(day, datetime.min.time()), tz="UTC")
    dee = [_event("dee", "Signed Up", t0 - pd.Timedelta("3D"), "dz", "dee@acme.io")]
    dee += [_event("$device:dz", CORE, t0 - pd.Timedelta(hours=30 - h), "dz") for h in range(8)]
    with atomic_dir(lake.events("crafted", day - timedelta(days=2))) as tmp:
        pq.write_table(pa.Table.from_pylist(dee, schema=SCHEMA), tmp / "part-0.parquet")
    newcomer = _event("newcomer", "Signed Up", t0 + pd.Timedelta("12h"), "dz", "nc@example.org")
    events = pd.concat([events, pd.DataFrame([newcomer])], ignore_index=True)
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    snapshots.score_day(cfg, day - timedelta(days=1), accounts)
    dee_before = snapshots.view(lake).set_index("user_key").loc["dee", "score"]

    rng = random.Random(5)
    start = pd.Timestamp(datetime.combine(day, datetime.min.time()), tz="UTC")
    cuts = sorted(
        (start + pd.Timedelta(seconds=rng.uniform(0, 86400))).floor("us") for _ in range(9)
    )
    cuts.append(start + pd.Timedelta("1D"))
    last, new_pqls = start, 0
    for n, cut in enumerate(cuts):
        batch = events[(events["ts"] >= last) & (events["ts"] < cut)]
        last = cut
        if batch.empty:
            continue
        before = snapshots.view(lake)
        files = [_land(lake, day, batch, n)]
        got = intraday.rescore(cfg, lake, files, cut.to_pydatetime(), accounts)
        touched = intraday.touched_users(lake, files)
        assert got["touched"] == len(touched) > 0
        # The reference: everyone rescored as of the same moment from the same previous rows.
        full = snapshots.score_users(cfg, lake, cut.to_pydatetime(), accounts, before)
        full = full.set_index("user_key")
        full = full.loc[full.index.isin(touched), COMPARED]
        mine = snapshots.view(lake).set_index("user_key").loc[full.index, COMPARED]
        pd.testing.assert_frame_equal(mine.sort_index(), full.sort_index(), check_dtype=False)
        assert set(batch.loc[~batch["user_key"].str.startswith("$device:"), "user_key"]) <= set(
            touched
        )
        new_pqls += got["new_pqls"]
        # Every new PQL crossed at one of their events: flagged as of it, not just before.
        fresh = mine[mine["flag"] & ~mine.index.isin(before.loc[before["flag"], "user_key"])]
        for user, row in fresh.iterrows():
            moment = row["qualified_at"]
            assert moment <= cut
            at = snapshots.score_users(cfg, lake, moment.to_pydatetime(), accounts, None,
                                       users=[user])  # fmt: skip
            just_before = snapshots.score_users(
                cfg, lake, (moment - US).to_pydatetime(), accounts, None, users=[user]
            )
            assert bool(at["flag"].iloc[0]), (user, moment)
            assert just_before.empty or not bool(just_before["flag"].iloc[0]), (user, moment)
    assert new_pqls > 0, "the day must hold some crossings for the test to mean anything"
    now = snapshots.view(lake).set_index("user_key")
    assert "newcomer" in now.index
    assert now.loc["dee", "score"] < dee_before  # rescored though none of the events were hers
    # The daily run keeps each intraday qualified_at.
    view = snapshots.view(lake).set_index("user_key")
    snapshots.score_day(cfg, day, accounts)
    daily = pd.read_parquet(lake.scores(day) / "scores.parquet").set_index("user_key")
    kept = view[view["qualified_at"].notna()].index
    pd.testing.assert_series_equal(
        daily.loc[kept, "qualified_at"], view.loc[kept, "qualified_at"], check_dtype=False
    )
