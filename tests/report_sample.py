"""A small weekly report written by the real report.write, for the report view, delivery and
browser tests: 120 sign-ups over 4 weeks, 12 PQLs of whom 4 meet and 3 win, 1 non-PQL wins."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

WEEK = date(2026, 11, 16)


def write(lake_root: Path, week: date = WEEK) -> Path:
    """Write reports/week=W/ (page, CSV files, charts, health checks); returns its folder."""
    import pandas as pd

    from pql import charts, health, outcomes, report
    from pql.lake import Lake

    t0 = pd.Timestamp(week, tz="UTC") - pd.Timedelta(days=28)
    users = pd.DataFrame(
        [
            {
                "email": f"u{i}@acme.io",
                "first_seen": t0 + pd.Timedelta(days=i % 28, hours=1),
                "qualified_at": t0 + pd.Timedelta(days=i % 28 + 1) if i < 12 else pd.NaT,
                "score": 85 if i < 12 else 15,
            }
            for i in range(120)
        ]
    )
    meetings = pd.DataFrame(
        {
            "meeting_id": range(4),
            "email": [f"u{i}@acme.io" for i in range(4)],
            "meeting_at": [t0 + pd.Timedelta(days=i + 1, hours=3) for i in range(4)],
        }
    )
    won = pd.DataFrame(
        {
            "deal_id": range(4),
            "email": ["u0@acme.io", "u1@acme.io", "u2@acme.io", "u40@acme.io"],
            "won_at": [t0 + pd.Timedelta(days=20)] * 4,
            "amount": [1200.0] * 4,
        }
    )
    per_user = outcomes.attribute(users, meetings, won, 90)
    now = datetime(2026, 11, 23, 6, tzinfo=UTC)
    page = report.write(
        Lake(lake_root),
        week,
        outcomes.cohort_rates(per_user, now, 90),
        outcomes.totals(per_user),
        generated_at=now,
        window_days=90,
        health=health.checks(per_user, users),
        charts=charts.build(per_user, users),
    )
    return page.parent
