"""Conversion metrics by cohort, qualifying model version and segment, against hand-made truth."""

from __future__ import annotations

from datetime import date

import pandas as pd

from pql.lake import Lake
from pql.report import metrics, outcomes

T0 = pd.Timestamp("2026-09-07", tz="UTC")  # a Monday


def _users():
    # (email, days after T0 first seen, PQL, employees, industry, source)
    spec = [
        ("a@big.io", 0, True, 5000, "Software", "mixpanel"),
        ("b@big.io", 0, True, 5000, "Software", "mixpanel"),
        ("c@small.io", 1, True, 8, "Retail", "amplitude"),
        ("d@small.io", 1, False, 8, "Retail", "amplitude"),
        ("e@small.io", 2, False, 8, "Retail", "mixpanel"),
        ("f@late.io", 50, True, None, None, "mixpanel"),  # window still open at as_of
    ]
    rows = []
    for email, day, pql, employees, industry, source in spec:
        first = T0 + pd.Timedelta(days=day)
        rows.append(
            {
                "email": email,
                "first_seen": first,
                "qualified_at": first + pd.Timedelta(days=2) if pql else pd.NaT,
                "employees": employees,
                "industry": industry,
                "source": source,
                "model_version": "weighted-2",
            }
        )
    return pd.DataFrame(rows)


def _snapshots(lake: Lake, users: pd.DataFrame) -> None:
    """a and b qualified while weighted-1 was live; c and f under weighted-2."""
    for day, version in ((date(2026, 9, 9), "weighted-1"), (date(2026, 12, 1), "weighted-2")):
        snap = users.assign(model_version=version, as_of=pd.Timestamp(day, tz="UTC"))
        snap = snap.assign(
            qualified_at=snap["qualified_at"].where(snap["qualified_at"] <= snap["as_of"])
        )
        lake.scores(day).mkdir(parents=True)
        snap.to_parquet(lake.scores(day) / "scores.parquet")


def test_breakdowns_match_hand_computed_truth(tmp_path):
    users = _users()
    lake = Lake(tmp_path)
    _snapshots(lake, users)
    q = users.set_index("email")["qualified_at"]
    meetings = pd.DataFrame(
        {
            "meeting_id": [1, 2, 3],
            "email": ["a@big.io", "c@small.io", "d@small.io"],
            "meeting_at": [q["a@big.io"] + pd.Timedelta(days=1), q["c@small.io"] +
                           pd.Timedelta(days=3), T0 + pd.Timedelta(days=5)],
        }
    )  # fmt: skip
    won = pd.DataFrame(
        {
            "deal_id": [1, 2],
            "email": ["a@big.io", "c@small.io"],
            "won_at": [q["a@big.io"] + pd.Timedelta(days=10), q["c@small.io"] +
                       pd.Timedelta(days=20)],
            "amount": [12_000.0, 3_000.0],
        }
    )  # fmt: skip
    tasks = pd.DataFrame(
        {"task_id": [1], "email": ["b@big.io"], "task_at": [q["b@big.io"] + pd.Timedelta(hours=3)]}
    )
    as_of = T0 + pd.Timedelta(days=60)  # f's 30-day window is open: it must not count
    per_user = outcomes.attribute(users, meetings, won, 30, tasks=tasks, until=as_of)
    versions = metrics.qualifying_versions(metrics.scores_glob(lake.root / "scores"))
    assert dict(zip(versions["email"], versions["qualified_by"], strict=True)) == {
        "a@big.io": "weighted-1",
        "b@big.io": "weighted-1",
        "c@small.io": "weighted-2",
        "f@late.io": "weighted-2",
    }
    frame = metrics.segmented(per_user, users, versions)
    table = metrics.all_breakdowns(frame, ["model_version", "size_band", "industry", "source"])
    row = table.set_index(["dimension", "value", "group"]).to_dict("index")

    pql = row[("all", "all", "PQL")]
    assert (pql["users"], pql["mature_users"], pql["meetings"], pql["won"]) == (4, 3, 2, 2)
    assert pql["still_open"] == 1 and pql["note"] == ""
    assert (pql["meeting_rate"], pql["won_rate"], pql["won_revenue"]) == (2 / 3, 2 / 3, 15_000)
    assert (round(pql["won_low"], 4), round(pql["won_high"], 4)) == (0.2077, 0.9385)  # Wilson
    assert pql["median_days_to_meeting"] == 2.0  # 1 and 3 days
    assert pql["median_days_to_won"] == 15.0  # 10 and 20 days
    assert pql["median_hours_to_first_touch"] == 24.0  # 24 h (a), 3 h (b), 72 h (c)
    assert pql["touched"] == 3
    non = row[("all", "all", "non-PQL")]
    assert (non["mature_users"], non["meeting_rate"], non["won_rate"]) == (2, 0.5, 0.0)

    v1, v2 = (
        row[("model_version", "weighted-1", "PQL")],
        row[("model_version", "weighted-2", "PQL")],
    )
    assert (v1["mature_users"], v1["won_rate"], v1["won_revenue"]) == (2, 0.5, 12_000)
    assert (v2["users"], v2["mature_users"], v2["won_rate"]) == (2, 1, 1.0)
    assert ("model_version", "unknown", "non-PQL") not in row  # versions qualify PQLs only

    big = row[("size_band", "1001+", "PQL")]
    small = row[("size_band", "1-10", "PQL")]
    assert (big["won_rate"], small["won_rate"]) == (0.5, 1.0)
    late = row[("size_band", "unknown", "PQL")]
    assert late["mature_users"] == 0 and pd.isna(late["won_rate"])  # too early, not 0%
    assert late["note"] == "too early: first mature on 2026-11-28"
    bands = list(table.loc[table["dimension"] == "size_band", "value"].drop_duplicates())
    assert bands == ["1-10", "1001+", "unknown"]  # in their order, unknown last
    assert row[("source", "amplitude", "non-PQL")]["meeting_rate"] == 1.0
    assert row[("industry", "Retail", "non-PQL")]["users"] == 2


def test_report_page_and_csv_carry_the_breakdowns(tmp_path):
    from datetime import datetime

    from pql.report import weekly

    users = _users()
    no_meetings = pd.DataFrame(columns=["meeting_id", "email", "meeting_at"])
    no_wins = pd.DataFrame(columns=["deal_id", "email", "won_at", "amount"])
    rep = weekly.compute(users, no_meetings, no_wins, week=date(2026, 11, 2), window_days=30,
                            segments=["size_band"])  # fmt: skip
    html = weekly.write(Lake(tmp_path), rep, generated_at=datetime(2026, 11, 9))
    page = html.read_text()
    assert 'id="by-size_band"' in page and "Company size (employees)" in page
    back = pd.read_csv(html.parent / "metrics.csv")
    assert set(back["dimension"]) == {"all", "cohort_week", "size_band"}


def test_account_level_attribution_from_the_pqa_snapshots(tmp_path):
    users = _users().assign(account_key=lambda f: f["email"].str.split("@").str[1])
    lake = Lake(tmp_path)
    for day, qualified in (
        (date(2026, 9, 9), {"big.io"}),
        (date(2026, 12, 1), {"big.io", "late.io"}),
    ):
        lake.scores(day).mkdir(parents=True)
        pd.DataFrame(
            {"account_key": ["big.io", "small.io", "late.io"],
             "qualified": [k in qualified for k in ("big.io", "small.io", "late.io")]}
        ).to_parquet(lake.scores(day) / "accounts.parquet")  # fmt: skip
    pqa = metrics.qualifying_accounts(str(lake.root / "scores" / "date=*" / "accounts.parquet"))
    assert dict(zip(pqa["account_key"], pqa["qualified_on"].astype(str), strict=True)) == {
        "big.io": "2026-09-09",
        "late.io": "2026-12-01",
    }
    q = users.set_index("email")["qualified_at"]
    meetings = pd.DataFrame(
        {"meeting_id": [1, 2], "email": ["a@big.io", "d@small.io"],
         "meeting_at": [q["a@big.io"] + pd.Timedelta(days=1), T0 + pd.Timedelta(days=5)]}
    )  # fmt: skip
    won = pd.DataFrame(
        {"deal_id": [1, 2], "email": ["a@big.io", "c@small.io"],
         "won_at": [q["a@big.io"] + pd.Timedelta(days=10), T0 + pd.Timedelta(days=23)],
         "amount": [12_000.0, 3_000.0]}
    )  # fmt: skip
    until = T0 + pd.Timedelta(days=60)
    accounts = metrics.account_attribution(users, meetings, won, pqa, 30, until=until)
    per_user = outcomes.attribute(users, meetings, won, 30, until=until)
    table = metrics.all_breakdowns(metrics.segmented(per_user, users), [], accounts=accounts)
    row = table[table["dimension"] == "accounts"].set_index("group").to_dict("index")
    pqa_row, other = row["PQA"], row["non-PQA"]
    # big.io (mature: met and won, 12,000); late.io qualified after this report's end
    assert (pqa_row["users"], pqa_row["mature_users"], pqa_row["won_rate"]) == (1, 1, 1.0)
    assert pqa_row["won_revenue"] == 12_000
    # small.io never qualified: it starts at its first sign-up, and its users' outcomes count;
    # late.io is here a non-PQA still inside its window
    assert (other["users"], other["mature_users"], other["still_open"]) == (2, 1, 1)
    assert (other["meeting_rate"], other["won_rate"]) == (1.0, 1.0)
