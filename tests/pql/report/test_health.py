"""Health checks and the report's definitions against hand-computed truth.

Each definition of the weekly report (README "How the numbers are counted") has a case here:
mature users only, k of n with a Wilson interval, verdicts only with enough conversions, "too
early" before any window closed, revenue once per deal, the qualifying moment's week, same-day
meetings, cancelled meetings, late wins, a zero-win bottom band, rounding once, and no None or
NaN in anything a reader sees.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from pql.lake import Lake
from pql.report import charts, health, outcomes, weekly

T0 = pd.Timestamp("2026-09-07", tz="UTC")  # a Monday
LATE = date(2026, 11, 2)  # a report week when every user's 30-day window has closed


def _world():
    """100 sign-ups over 4 weeks: 10 PQLs (a day after sign-up) of whom 3 win within their
    window; 1 non-PQL wins; the 3 winners met sales 2 h after qualifying."""
    rows = []
    for i in range(100):
        first_seen = T0 + pd.Timedelta(days=i % 28, hours=1)
        pql = i < 10
        rows.append({
            "email": f"u{i}@acme.io", "first_seen": first_seen,
            "qualified_at": first_seen + pd.Timedelta(days=1) if pql else pd.NaT,
            "score": 90 if pql else 10,
        })  # fmt: skip
    users = pd.DataFrame(rows)
    won = pd.DataFrame(
        {
            "deal_id": range(4),
            "email": ["u0@acme.io", "u1@acme.io", "u2@acme.io", "u30@acme.io"],
            "won_at": [T0 + pd.Timedelta(days=20)] * 4,
            "amount": [1000.0] * 4,
        }
    )
    meetings = pd.DataFrame({"meeting_id": range(3),
                             "email": ["u0@acme.io", "u1@acme.io", "u2@acme.io"],
                             "meeting_at": [u + pd.Timedelta(hours=2)
                                            for u in users["qualified_at"][:3]]})  # fmt: skip
    return users, meetings, won


def _weekly(week=LATE, window=30, min_conversions=3, **kw):
    users, meetings, won = _world()
    return weekly.compute(users, meetings, won, week=week, window_days=window,
                          min_conversions=min_conversions, **kw)  # fmt: skip


def _checks(rep) -> dict[str, dict]:
    return {c["key"]: c for c in rep.health}


def test_checks_give_k_of_n_intervals_status_and_trend():
    got = _checks(_weekly())
    share = got["pql_share"]
    assert (share["k"], share["n"], share["value"], share["status"]) == (10, 100, 0.10, "pass")
    assert share["text"] == "10.0% (10 of 100; 95% CI 5.5-17.4%)" and "OpenView" in share["source"]
    assert share["trend"] == "25.0% (7/28) → 10.7% (3/28) → 0.0% (0/23) → 0.0% (0/21)"
    won = got["pql_won"]
    assert (won["k"], won["n"], won["status"]) == (3, 10, "pass")
    assert (round(won["low"], 4), round(won["high"], 4)) == (0.1078, 0.6032)  # Wilson 3 of 10
    first = got["pql_first"]
    assert (first["k"], first["n"], first["status"]) == (3, 4, "pass")  # 3 of 4 buyers
    bands = got["bands"]
    assert round(bands["value"], 4) == round(0.3 / (1 / 90), 4) and bands["status"] == "pass"
    touch = got["first_touch"]
    assert (touch["value"], touch["n"], touch["status"]) == (2.0, 3, "warn")  # not within 1 h
    assert "route them to a rep within the hour" in touch["advice"]


def test_a_loose_definition_fails_with_what_to_do():
    users, meetings, won = _world()
    users["qualified_at"] = users["first_seen"]  # everyone flagged: 4 of 100 win
    rep = weekly.compute(users, meetings, won, week=LATE, window_days=30, min_conversions=3)
    got = _checks(rep)
    assert (got["pql_won"]["status"], got["pql_won"]["k"], got["pql_won"]["n"]) == (
        "fail", 4, 100)  # fmt: skip
    assert "too loose" in got["pql_won"]["advice"]
    assert got["pql_share"]["status"] == "fail"
    assert rep.summary["attention"]["check"] == "share of sign-ups reaching PQL"
    assert any(line.startswith("Needs attention") for line in rep.summary["lines"])


def test_too_few_conversions_is_not_enough_data_never_pass_or_fail():
    got = _checks(_weekly(min_conversions=10))
    assert got["pql_won"]["status"] == "not enough data"
    assert got["pql_won"]["detail"] == "not enough data to judge: 3 wins of 10 needed"
    assert got["pql_first"]["detail"] == "not enough data to judge: 4 conversions of 10 needed"
    assert got["pql_share"]["status"] == "pass"  # 10 PQLs are enough for the share


def test_an_all_immature_report_says_too_early_everywhere(tmp_path):
    """The demo's old shape: a 90-day window, 4 weeks of history, nothing mature."""
    rep = _weekly(week=date(2026, 9, 28), window=90)
    statuses = {c["key"]: c["status"] for c in rep.health}
    assert statuses["pql_won"] == statuses["pql_share"] == statuses["bands"] == "too early"
    assert "the first window closes on 2026-12-07" in _checks(rep)["pql_won"]["detail"]
    assert not {"pass", "fail", "warn"} & {statuses["pql_won"], statuses["pql_share"]}
    assert any(line.startswith("Too early to judge conversion") and "2026-12-07" in line
               for line in rep.summary["lines"])  # fmt: skip
    assert "too early to judge" in rep.summary["title"]
    totals = rep.breakdowns[rep.breakdowns["dimension"] == "all"]
    assert (totals["mature_users"] == 0).all() and totals["won_rate"].isna().all()
    assert totals["note"].str.startswith("too early: first mature on").all()
    page = weekly.write(Lake(tmp_path), rep, generated_at=datetime(2026, 10, 5, tzinfo=UTC))
    text = page.read_text()
    assert "too early" in text and "fail" not in re.sub(r"<style>.*?</style>", "", text, flags=re.S)


def test_revenue_counts_a_two_contact_deal_once_for_the_first_to_start():
    users = pd.DataFrame({
        "email": ["a@acme.io", "b@acme.io"],
        "first_seen": [T0, T0 + pd.Timedelta(days=2)],
        "qualified_at": [T0 + pd.Timedelta(days=3), T0 + pd.Timedelta(days=1)],
        "score": [90, 90],
    })  # fmt: skip
    won = pd.DataFrame(
        {
            "deal_id": ["d1", "d1", "d2"],
            "email": ["a@acme.io", "b@acme.io", "a@acme.io"],
            "won_at": [T0 + pd.Timedelta(days=10)] * 2 + [T0 + pd.Timedelta(days=90)],
            "amount": [19_300.0] * 2 + [500.0],
        }
    )
    no_meetings = pd.DataFrame(columns=["meeting_id", "email", "meeting_at"])
    per_user = outcomes.attribute(users, no_meetings, won, 30, until=T0 + pd.Timedelta(days=100))
    revenue = per_user.set_index("email")["won_amount"]
    # b qualified first: d1 is hers, once; d2 came after a's window: no one's revenue
    assert (revenue["b@acme.io"], revenue["a@acme.io"]) == (19_300.0, 0.0)
    assert per_user["won"].all()  # both people bought (a person-level rate)


def test_a_sunday_qualifier_is_in_that_week_and_nothing_after_the_week_is_reported():
    sunday = pd.Timestamp("2026-09-13 23:10", tz="UTC")
    users = pd.DataFrame({
        "email": ["sun@acme.io", "next@acme.io"],
        "first_seen": [sunday - pd.Timedelta(days=3), sunday - pd.Timedelta(days=2)],
        "qualified_at": [sunday, sunday + pd.Timedelta(hours=2)],  # Monday 01:10: next week
        "score": [90, 90],
    })  # fmt: skip
    none = pd.DataFrame(columns=["meeting_id", "email", "meeting_at"])
    wins = pd.DataFrame(columns=["deal_id", "email", "won_at", "amount"])
    rep = weekly.compute(users, none, wins, week=date(2026, 9, 7), window_days=30)
    u = rep.per_user.set_index("email")
    assert (
        u.loc["sun@acme.io", "is_pql"] and str(u.loc["sun@acme.io", "cohort_week"]) == "2026-09-07"
    )
    # next@ qualified after the week's end: a non-PQL (signed up) in this report, not a PQL
    assert not u.loc["next@acme.io", "is_pql"]
    assert set(rep.breakdowns.loc[rep.breakdowns["dimension"] == "cohort_week", "value"]) == {
        "2026-09-07"}  # fmt: skip


def test_a_same_day_meeting_after_qualifying_counts_and_cancelled_ones_do_not():
    q = pd.Timestamp("2026-09-10 10:03", tz="UTC")
    users = pd.DataFrame({"email": ["a@x.io", "b@x.io", "c@x.io"],
                          "first_seen": [q - pd.Timedelta(days=2)] * 3,
                          "qualified_at": [q] * 3, "score": [90] * 3})  # fmt: skip
    meetings = pd.DataFrame({
        "meeting_id": [1, 2, 3, 4],
        "email": ["a@x.io", "b@x.io", "c@x.io", "c@x.io"],
        "meeting_at": [q + pd.Timedelta(hours=5), q - pd.Timedelta(hours=1),
                       q + pd.Timedelta(hours=1), q + pd.Timedelta(days=1)],
        "outcome": ["COMPLETED", "COMPLETED", "CANCELED", "NO_SHOW"],
    })  # fmt: skip
    wins = pd.DataFrame(columns=["deal_id", "email", "won_at", "amount"])
    until = q + pd.Timedelta(days=60)
    met = outcomes.attribute(users, meetings, wins, 30, until=until).set_index("email")["meeting"]
    # a met 5 h after qualifying (same day); b's meeting came before; c's were cancelled/no-show
    assert met.to_dict() == {"a@x.io": True, "b@x.io": False, "c@x.io": False}
    counted = outcomes.attribute(users, meetings, wins, 30, until=until, excluded_outcomes=())
    assert counted.set_index("email")["meeting"]["c@x.io"]  # configurable


def test_late_wins_stay_in_the_pqls_first_denominator():
    users, meetings, won = _world()
    late = pd.DataFrame({"deal_id": [9], "email": ["u50@acme.io"],
                         "won_at": [T0 + pd.Timedelta(days=60)], "amount": [800.0]})  # fmt: skip
    rep = weekly.compute(users, meetings, pd.concat([won, late]), week=LATE, window_days=30,
                            min_conversions=3)  # fmt: skip
    first = _checks(rep)["pql_first"]
    assert (first["k"], first["n"]) == (3, 5)  # u50 won outside any window: still a buyer


def test_a_zero_win_bottom_band_is_said_in_words():
    users, meetings, won = _world()
    got = _checks(
        weekly.compute(
            users,
            meetings,
            won[won["email"] != "u30@acme.io"],
            week=LATE,
            window_days=30,
            min_conversions=3,
        )
    )["bands"]
    assert got["status"] == "pass" and got["detail"] == "the bottom band has no wins at all"
    assert pd.isna(got["value"]) and "0.0% (0 of 90" in got["text"]


def test_rates_are_rounded_once():
    users = pd.DataFrame({"email": [f"n{i}@x.io" for i in range(2049 * 2)],
                          "first_seen": [T0] * (2049 * 2), "qualified_at": [pd.NaT] * 4098,
                          "score": [10] * 4098})  # fmt: skip
    # 84 of 4,098 = 2.0498%: shown as 2.0% (rounding 0.0205 first would show 2.1%)
    won = pd.DataFrame(
        {
            "deal_id": range(84),
            "email": [f"n{i}@x.io" for i in range(84)],
            "won_at": [T0 + pd.Timedelta(days=5)] * 84,
            "amount": [1.0] * 84,
        }
    )
    none = pd.DataFrame(columns=["meeting_id", "email", "meeting_at"])
    rep = weekly.compute(users, none, won, week=LATE, window_days=30)
    row = weekly._rows(rep.breakdowns[rep.breakdowns["dimension"] == "all"])[0]
    assert row["won_text"] == "2.0% (84/4,098)"


def test_outputs_have_no_none_or_nan_and_the_page_matches_the_csv(tmp_path):
    rep = _weekly(segments=["size_band"])
    page = weekly.write(Lake(tmp_path), rep, generated_at=datetime(2026, 11, 9, tzinfo=UTC))
    folder = page.parent
    for f in sorted(folder.iterdir()):
        text = f.read_text()
        assert not re.search(r"\b(None|nan|NaN|null|inf)\b", text), f.name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rates"]["pql_won"]["text"] == "30.0% (3 of 10; 95% CI 10.8-60.3%)"
    totals = pd.read_csv(folder / "totals.csv").set_index("group")
    assert (totals.loc["PQL", "won"], totals.loc["PQL", "mature_users"]) == (3, 10)
    html = page.read_text()
    assert "30.0% (3/10)" in html and "10.8%–60.3%" in html
    for c in rep.charts:
        assert f'id="chart-{c["id"]}"' in html
        kept = pd.read_csv(folder / f"chart_{c['id']}.csv")
        assert len(kept) == len(c["data"])
    won_chart = next(c for c in rep.charts if c["id"] == "won_by_cohort")
    words = charts.text_of(won_chart["svg"])
    assert "won rate, % of mature users" in words and "weekly cohort" in words


def test_immature_cohorts_are_grey_and_labelled_in_the_chart():
    rep = _weekly(week=date(2026, 10, 5), window=30)  # the last cohorts are still open
    cohorts = rep.breakdowns[rep.breakdowns["dimension"] == "cohort_week"]
    assert (cohorts["mature_users"] == 0).any() and (cohorts["mature_users"] > 0).any()
    svg = next(c for c in rep.charts if c["id"] == "won_by_cohort")["svg"]
    assert "too early" in charts.text_of(svg)


@pytest.mark.parametrize("version", ["predictive-20261116-060000"])
def test_the_report_puts_model_versions_side_by_side(tmp_path, version):
    models = [
        {"version": version, "trained_at": "2026-11-16T06:00:00+00:00",
         "holdout_from": "2026-09-20T00:00:00+00:00", "current": False, "auc": 0.91,
         "ece": 0.004, "brier": 0.02},
        {"version": "predictive-20261109-060000", "trained_at": "2026-11-09T06:00:00+00:00",
         "holdout_from": "2026-09-13T00:00:00+00:00", "current": True, "auc": 0.93,
         "ece": 0.003, "brier": 0.02},
    ]  # fmt: skip
    page = weekly.write(Lake(tmp_path), _weekly(models=models), generated_at=datetime.now(UTC))
    html = page.read_text()
    assert 'id="models"' in html and "0.910" in html and "0.930" in html
    assert list(pd.read_csv(page.parent / "models.csv")["current"]) == [False, True]


def test_health_rows_say_everything_in_words():
    for c in _weekly(week=date(2026, 9, 28), window=90).health:
        assert c["status"] in ("pass", "warn", "fail", health.TOO_EARLY, health.NOT_ENOUGH)
        assert c["text"] and c["trend"] and c["source"]


def test_the_pipelines_own_latency_to_the_crm_flag():
    """Minutes from qualifying to the flag in the CRM: p95 and k of n within 15 minutes; a
    flag older than the qualification (flagged before, still flagged) does not count."""
    users, meetings, won = _world()
    late = [4, 6, 8, 10, 12, 14, 30, 120]  # minutes, for the first 8 PQLs
    users["flagged_at"] = pd.Series(pd.NaT, index=users.index, dtype="datetime64[ns, UTC]")
    for i, m in enumerate(late):
        users.loc[i, "flagged_at"] = users.loc[i, "qualified_at"] + pd.Timedelta(minutes=m)
    users.loc[8, "flagged_at"] = users.loc[8, "qualified_at"] - pd.Timedelta(days=3)

    def flag(users) -> pd.Series:
        return pd.Series(users["flagged_at"].to_numpy(), index=users["email"]).dropna()

    rep = weekly.compute(users, meetings, won, week=LATE, window_days=30, min_conversions=3,
                         flagged=flag(users))  # fmt: skip
    got = _checks(rep)["flag_latency"]
    assert (got["k"], got["n"], got["status"]) == (6, 8, "fail")
    assert got["text"] == "median 11 min, p95 88 min; 6 of 8 PQLs flagged within 15 minutes"
    assert "freshness" in got["advice"]
    users["flagged_at"] = users["qualified_at"] + pd.Timedelta(minutes=5)
    kw = dict(week=LATE, window_days=30, min_conversions=3)
    fast = _checks(weekly.compute(users, meetings, won, flagged=flag(users), **kw))
    fast = fast["flag_latency"]
    assert (fast["k"], fast["n"], fast["status"]) == (10, 10, "pass")
    users["flagged_at"] = pd.Series(pd.NaT, index=users.index, dtype="datetime64[ns, UTC]")
    none = _checks(weekly.compute(users, meetings, won, flagged=flag(users), **kw))
    none = none["flag_latency"]
    assert none["status"] == "too early" and none["text"] == "no flags"
