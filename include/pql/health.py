"""Health checks of the PQL definition against published benchmarks, with their recent trend.

Each check says pass / warn / fail, the benchmark and where it comes from, and its value for each
of the recent weekly cohorts (oldest first) so leadership sees the direction, not one number.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

TREND_WEEKS = 6

# The benchmarks, as published (ranges quoted by the sources; see README "Weekly report").
SOURCES = {
    "pql_share": "OpenView Product Benchmarks / Pocus PQL guides: 5-15% of sign-ups become PQLs",
    "pql_won": "OpenView / Pocus: PQLs convert at 15-30%; under 15% the definition is too loose, "
    "over 40% too tight",
    "pql_first": "Pocus / Correlated: a useful PQL definition catches most buyers before they buy",
    "bands": "Lead-scoring practice: the top score band should convert many times the bottom band",
    "first_touch": "HBR 'The Short Life of Online Sales Leads' (2011): contacted within an hour, "
    "leads were 7x likelier to qualify than after an hour, 60x than after a day",
}


def _status(value: float | None, good: Callable, near: Callable) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return "pass" if good(value) else ("warn" if near(value) else "fail")


def _by_week(frame: pd.DataFrame, week_col: str, metric: Callable) -> list:
    weeks = sorted(frame[week_col].dropna().unique())[-TREND_WEEKS:]
    out = []
    for w in weeks:
        v = metric(frame[frame[week_col] == w])
        out.append(None if v is None or np.isnan(v) else round(float(v), 4))
    return out


def checks(per_user: pd.DataFrame, scores: pd.DataFrame) -> list[dict]:
    """The health checks for a weekly report.

    `per_user` is outcomes.attribute's frame (email, first_seen, qualified_at, is_pql, start,
    cohort_week, meeting_at, meeting, won_at, won, and first_touch_at when tasks were given);
    `scores` the week's snapshot (email, score).
    """
    u = per_user.merge(scores[["email", "score"]].drop_duplicates("email"), on="email", how="left")
    u["signup_week"] = (
        pd.to_datetime(u["first_seen"], utc=True).dt.tz_convert(None).dt.to_period("W-SUN")
    ).dt.start_time.dt.date
    out = []

    def share_pql(f):
        return f["is_pql"].mean() if len(f) else None

    v = share_pql(u)
    out.append(_row("share of sign-ups reaching PQL", v, "5-15%", "pql_share",
                    _status(v, lambda x: 0.05 <= x <= 0.15, lambda x: 0.03 <= x <= 0.25),
                    _by_week(u, "signup_week", share_pql)))  # fmt: skip

    def pql_won(f):
        p = f[f["is_pql"]]
        return p["won"].mean() if len(p) else None

    v = pql_won(u)
    out.append(_row("PQL → won", v, "15-30%", "pql_won",
                    _status(v, lambda x: 0.15 <= x <= 0.30, lambda x: 0.10 <= x <= 0.40),
                    _by_week(u, "cohort_week", pql_won)))  # fmt: skip

    def pql_first(f):
        won = f[f["won_at"].notna()]
        if won.empty:
            return None
        first = won["qualified_at"].notna() & (
            pd.to_datetime(won["qualified_at"], utc=True) <= won["won_at"]
        )
        return first.mean()

    v = pql_first(u)
    out.append(_row("conversions that were PQLs first", v, "most (70%+)", "pql_first",
                    _status(v, lambda x: x >= 0.70, lambda x: x >= 0.50),
                    _by_week(u, "signup_week", pql_first)))  # fmt: skip

    def band_ratio(f):
        top, bottom = f[f["score"] >= 80], f[f["score"] < 20]
        if top.empty or bottom.empty:
            return None
        low = bottom["won"].mean()
        return top["won"].mean() / low if low > 0 else float(top["won"].mean() > 0) * 99.0

    v = band_ratio(u)
    out.append(_row("top score band (80+) vs bottom (<20), won rate", v, "many times (5x+)",
                    "bands", _status(v, lambda x: x >= 5, lambda x: x >= 2),
                    _by_week(u, "signup_week", band_ratio), ratio=True))  # fmt: skip

    # A touch is a meeting or, when the CRM's completed tasks were pulled, a task.
    touch = "first_touch_at" if "first_touch_at" in u.columns else "meeting_at"

    def first_touch_hours(f):
        p = f[f["is_pql"] & f[touch].notna()]
        if p.empty:
            return None
        hours = (p[touch] - pd.to_datetime(p["qualified_at"], utc=True)).dt.total_seconds()
        return float(np.median(hours / 3600))

    v = first_touch_hours(u)
    kinds = "meeting or task" if touch == "first_touch_at" else "meeting"
    out.append(_row(f"median hours from qualifying to first sales touch ({kinds})", v,
                    "within 1 hour", "first_touch",
                    _status(v, lambda x: x <= 1, lambda x: x <= 24),
                    _by_week(u, "cohort_week", first_touch_hours), hours=True))  # fmt: skip
    return out


def _row(name, value, benchmark, source, status, trend, ratio=False, hours=False) -> dict:
    return {
        "check": name,
        "value": None if value is None else round(float(value), 4),
        "unit": "x" if ratio else ("hours" if hours else "share"),
        "benchmark": benchmark,
        "source": SOURCES[source],
        "status": status,
        "trend": trend,
    }
