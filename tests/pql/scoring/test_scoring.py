"""Features are point-in-time; the weighted model caps, subtracts and explains in plain words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pql import config
from pql.enrich import firmographics
from pql.events.canonical import SCHEMA
from pql.scoring import snapshots, weighted
from pql.scoring.features import user_features

AS_OF = datetime(2026, 10, 10, tzinfo=UTC)
FEATURES = config.Features()
MODEL = config.WeightedModel.model_validate(
    {
        "kind": "weighted",
        "version": "t1",
        "threshold": 50,
        "max_reasons": 2,
        "signals": [
            {
                "kind": "event",
                "event": "Core Feature Used",
                "window_days": 7,
                "points_each": 5,
                "max_points": 20,
                "reason": "used the core feature {n} times in {window_days} days",
            },
            {
                "kind": "event",
                "event": "Teammate Invited",
                "window_days": 30,
                "points_each": 15,
                "reason": "invited {n} teammates",
            },
            {"kind": "active_days", "window_days": 7, "points_each": 2},
            {
                "kind": "firmographic",
                "field": "employees",
                "at_least": 100,
                "points": 20,
                "reason": "{value} employees",
            },
            {"kind": "free_email", "points": -30},
        ],
    }
)


def _events(tmp_path, rows):
    out = tmp_path / "events" / "source=t" / "date=x"
    out.mkdir(parents=True)
    full = [
        {
            "source": "t",
            "event_id": str(i),
            "device_id": None,
            "account_key": None,
            "received_at": r["ts"],
            "properties": "{}",
            "email": None,
            **r,
        }
        for i, r in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), out / "p.parquet")
    return str(tmp_path / "events" / "source=*" / "date=*" / "*.parquet")


def _at(days_before: float) -> datetime:
    return AS_OF - timedelta(days=days_before)


def test_features_see_only_the_past(tmp_path):
    rows = [{"user_key": "u1", "event_name": "Signed Up", "ts": _at(20), "email": "a@acme.io"}]
    rows += [
        {"user_key": "u1", "event_name": "Core Feature Used", "ts": _at(d)}
        for d in (1, 2, 2.5, 6, 8)
    ]  # 8 days ago is outside the 7-day window
    rows += [
        {"user_key": "u1", "event_name": "Core Feature Used", "ts": AS_OF},  # not before T
        {"user_key": "u2", "event_name": "Signed Up", "ts": _at(1), "email": "b@gmail.com"},
        {"user_key": "$device:x", "event_name": "Page Viewed", "ts": _at(1)},
    ]
    glob = _events(tmp_path, rows)
    f = user_features(glob, AS_OF, FEATURES, ["gmail.com"], model=MODEL).set_index("user_key")
    assert list(f.index) == ["u1", "u2"]  # the anonymous device is not a user
    assert f.loc["u1", "s0"] == 4 and f.loc["u1", "s2"] == 4
    assert (f.loc["u1", "email"], f.loc["u1", "account_key"]) == ("a@acme.io", "acme.io")
    assert f.loc["u2", "free_email"] and pd.isna(f.loc["u2", "account_key"])
    earlier = user_features(glob, _at(5), FEATURES, ["gmail.com"], model=MODEL).set_index(
        "user_key"
    )
    assert list(earlier.index) == ["u1"] and earlier.loc["u1", "s0"] == 2  # 6 and 8 days ago


def test_points_caps_negatives_and_reasons():
    feats = pd.DataFrame(
        {
            "s0": [9, 1, 0],
            "s1": [2, 0, 0],
            "s2": [5, 1, 0],
            "employees": pd.array([250, None, 5], dtype="Int64"),
            "industry": ["Software", None, None],
            "free_email": [False, True, False],
        }
    )
    out = weighted.score(feats, MODEL)
    # 20 (capped from 45) + 30 + 10 + 20 = 80; 5 + 0 + 2 + 0 - 30 -> 0 (clipped); nothing -> 0
    assert list(out["score"]) == [80, 0, 0]
    assert list(out["flag"]) == [True, False, False]
    assert out["reasons"][0] == "invited 2 teammates; used the core feature 9 times in 7 days"
    assert out["reasons"][1] == (
        "used the core feature 1 times in 7 days; active 1 of the last "
        "7 days; signed up with a free email address"
    )
    assert out["reasons"][2] == ""
    assert (out["model_version"] == "t1").all()


def test_missing_firmographics_are_not_an_error(tmp_path):
    users = pd.DataFrame({"email_domain": ["acme.io", "unknown.io", None]})
    accounts = firmographics.normalise(
        pd.DataFrame({"domain": [" ACME.io "], "employees": ["120"]})
    )
    joined = firmographics.join(users, accounts)
    assert joined["employees"].tolist()[0] == 120 and joined["employees"].isna().sum() == 2
    path = tmp_path / "firmo.csv"
    path.write_text("domain,employees,industry\nacme.io,120,Software\n")
    assert firmographics.from_file(path).loc[0, "industry"] == "Software"


def test_first_qualification_is_kept():
    previous = pd.DataFrame(
        {"user_key": ["a", "b"], "qualified_at": [pd.Timestamp("2026-10-01", tz="UTC"), pd.NaT]}
    )
    now = pd.DataFrame({"user_key": ["a", "b", "c"], "flag": [False, True, False]})
    q = snapshots._qualified_at(now, previous, AS_OF)
    assert q[0] == pd.Timestamp("2026-10-01", tz="UTC")  # kept though no longer flagged
    assert q[1] == pd.Timestamp(AS_OF) and pd.isna(q[2])
