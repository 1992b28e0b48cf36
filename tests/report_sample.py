"""A small weekly report written by the real weekly.compute and weekly.write, for the report
view, delivery and browser tests: 120 sign-ups over 4 weeks, 12 PQLs of whom 4 meet and 3 win,
1 non-PQL wins; a 14-day window, so the older cohorts are mature and the newer ones too early."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

WEEK = date(2026, 11, 16)
WINDOW = 14  # days: the first two weekly cohorts are mature by the week's end


def write(lake_root: Path, week: date = WEEK) -> Path:
    """Write reports/week=W/ (page, CSV files, charts, health checks); returns its folder."""
    import pandas as pd

    from pql.lake import Lake
    from pql.report import weekly

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
            "won_at": [t0 + pd.Timedelta(days=6, hours=i) for i in range(3)]
            + [t0 + pd.Timedelta(days=30)],  # u40 signed up on day 12: a win after its window
            "amount": [1200.0] * 4,
        }
    )
    rep = weekly.compute(users, meetings, won, week=week, window_days=WINDOW,
                            min_conversions=2)  # fmt: skip
    page = weekly.write(Lake(lake_root), rep, generated_at=datetime(2026, 11, 23, 6, tzinfo=UTC))
    return page.parent
