"""Health checks: each benchmark judged pass / warn / fail, with its weekly trend."""

from __future__ import annotations

import pandas as pd

from pql import health, outcomes


def _world():
    """100 sign-ups over 4 weeks: 10 PQLs of whom 3 win; 1 non-PQL wins; meetings 2 h after."""
    t0 = pd.Timestamp("2026-09-07", tz="UTC")
    rows = []
    for i in range(100):
        first_seen = t0 + pd.Timedelta(days=i % 28, hours=1)
        pql = i < 10
        rows.append(
            {
                "email": f"u{i}@acme.io",
                "first_seen": first_seen,
                "qualified_at": first_seen + pd.Timedelta(days=1) if pql else pd.NaT,
                "score": 90 if pql else 10,
            }
        )
    users = pd.DataFrame(rows)
    won = pd.DataFrame(
        {
            "deal_id": range(4),
            "email": ["u0@acme.io", "u1@acme.io", "u2@acme.io", "u30@acme.io"],
            "won_at": [t0 + pd.Timedelta(days=20)] * 4,
            "amount": [1000.0] * 4,
        }
    )
    meetings = pd.DataFrame(
        {
            "meeting_id": range(3),
            "email": ["u0@acme.io", "u1@acme.io", "u2@acme.io"],
            "meeting_at": [u + pd.Timedelta(hours=2) for u in users["qualified_at"][:3]],
        }
    )
    per_user = outcomes.attribute(users, meetings, won, 90)
    return per_user, users


def test_checks_state_value_benchmark_source_status_and_trend():
    per_user, users = _world()
    got = {c["check"]: c for c in health.checks(per_user, users)}
    share = got["share of sign-ups reaching PQL"]
    assert share["value"] == 0.10 and share["status"] == "pass" and "OpenView" in share["source"]
    assert share["trend"] == [0.25, 0.1071, 0.0, 0.0] and all(0 <= v <= 1 for v in share["trend"])
    won = got["PQL → won"]
    assert won["value"] == 0.30 and won["status"] == "pass"
    first = got["conversions that were PQLs first"]
    assert first["value"] == 0.75 and first["status"] == "pass"  # 3 of 4 wins were PQLs first
    bands = got["top score band (80+) vs bottom (<20), won rate"]
    assert bands["value"] == round(0.3 / (1 / 90), 4) and bands["status"] == "pass"
    touch = got["median hours from qualifying to first sales touch (meeting)"]
    assert touch["value"] == 2.0 and touch["status"] == "warn"  # within a day, not an hour


def test_a_loose_definition_fails_the_win_rate_check():
    per_user, users = _world()
    per_user["is_pql"] = True  # everyone flagged: 4 of 100 win
    per_user["qualified_at"] = per_user["first_seen"]
    got = {c["check"]: c for c in health.checks(per_user, users)}
    assert got["PQL → won"]["status"] == "fail" and got["PQL → won"]["value"] == 0.04
    assert got["share of sign-ups reaching PQL"]["status"] == "fail"


def test_the_report_shows_the_checks_and_keeps_them_as_csv(tmp_path):
    from datetime import UTC, date, datetime

    from pql import report
    from pql.lake import Lake

    per_user, users = _world()
    checks = health.checks(per_user, users)
    html = report.write(
        Lake(tmp_path), date(2026, 10, 5), outcomes.cohort_rates(per_user, datetime.now(UTC), 90),
        outcomes.totals(per_user), generated_at=datetime.now(UTC), window_days=90, health=checks,
    )  # fmt: skip
    page = html.read_text()
    assert 'id="health"' in page and "PQL → won" in page and "OpenView" in page
    assert "25.0% → 10.7% → 0.0% → 0.0%" in page  # the trend of the PQL share
    kept = pd.read_csv(html.parent / "health.csv")
    assert list(kept["status"]) == [c["status"] for c in checks]


def test_the_report_draws_its_charts_from_the_numbers_it_keeps(tmp_path):
    import re
    from datetime import UTC, date, datetime

    from pql import charts, report
    from pql.lake import Lake

    per_user, users = _world()
    drawn = charts.build(per_user, users)
    html = report.write(
        Lake(tmp_path), date(2026, 10, 5), outcomes.cohort_rates(per_user, datetime.now(UTC), 90),
        outcomes.totals(per_user), generated_at=datetime.now(UTC), window_days=90, charts=drawn,
    )  # fmt: skip
    page = html.read_text()
    for c in drawn:
        assert f'id="chart-{c["id"]}"' in page
        kept = pd.read_csv(html.parent / f"chart_{c['id']}.csv")
        assert list(kept["label"].astype(str)) == c["labels"]
    funnel = pd.read_csv(html.parent / "chart_funnel.csv")
    assert list(funnel["users"]) == [100, 10, 3, 3]
    svg = page[
        page.index('id="chart-funnel"') : page.index("</figure>", page.index('id="chart-funnel"'))
    ]
    values = [float(v) for v in re.findall(r'data-value="([0-9.]+)"', svg)]
    assert values == [100, 10, 3, 3]  # the bars are the kept numbers
    band = pd.read_csv(html.parent / "chart_by_band.csv").set_index("label")["won rate"]
    assert band["80-100"] == 0.3 and round(band["0-19"], 4) == round(1 / 90, 4)


def test_the_report_puts_model_versions_side_by_side(tmp_path):
    from datetime import UTC, date, datetime

    from pql import report
    from pql.lake import Lake

    per_user, _ = _world()
    models = [
        {"version": "predictive-20261116-060000", "trained_at": "2026-11-16T06:00:00+00:00",
         "holdout_from": "2026-09-20T00:00:00+00:00", "current": False, "auc": 0.91,
         "ece": 0.004, "brier": 0.02},
        {"version": "predictive-20261109-060000", "trained_at": "2026-11-09T06:00:00+00:00",
         "holdout_from": "2026-09-13T00:00:00+00:00", "current": True, "auc": 0.93,
         "ece": 0.003, "brier": 0.02},
    ]  # fmt: skip
    html = report.write(
        Lake(tmp_path), date(2026, 10, 5), outcomes.cohort_rates(per_user, datetime.now(UTC), 90),
        outcomes.totals(per_user), generated_at=datetime.now(UTC), window_days=90, models=models,
    )  # fmt: skip
    page = html.read_text()
    assert 'id="models"' in page and "0.910" in page and "0.930" in page
    assert list(pd.read_csv(html.parent / "models.csv")["current"]) == [False, True]
