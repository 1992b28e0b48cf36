"""Health checks of the PQL definition against published benchmarks, with their recent trend.

Each check gives k of n with a 95% interval and a status: pass / warn / fail only when enough
conversions stand behind it (config `outcomes.min_conversions`), else "not enough data", and
"too early" while nobody's window has closed. The trend is the same figure per recent weekly
cohort (oldest first), so leadership sees the direction, not one number.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd

from pql.rates import Rate, pct
from pql.report.metrics import with_scores

TREND_WEEKS = 6
TOO_EARLY, NOT_ENOUGH = "too early", "not enough data"

# The benchmarks, as published (ranges quoted by the sources; see README "Weekly report").
SOURCES = {
    "pql_share": "OpenView Product Benchmarks / Pocus PQL guides: 5-15% of sign-ups become PQLs",
    "pql_won": "OpenView / Pocus: PQLs convert at 15-30%; under 15% the definition is too loose, "
    "over 40% too tight",
    "pql_first": "Pocus / Correlated: a useful PQL definition catches most buyers before they buy",
    "bands": "Lead-scoring practice: the top score band should convert many times the bottom band",
    "first_touch": "HBR 'The Short Life of Online Sales Leads' (2011): contacted within an hour, "
    "leads were 7x likelier to qualify than after an hour, 60x than after a day",
    "flag_latency": "Speed to lead: leads contacted within an hour convert at about 53%, after a "
    "day at about 17%; a PQL must reach its rep in minutes (README, Speed to lead)",
}
ADVICE = {
    ("pql_share", "low"): "few sign-ups qualify: the definition may be too tight; lower the "
    "threshold or add signals",
    ("pql_share", "high"): "many sign-ups qualify: the definition may be too loose; raise the "
    "threshold or require stronger signals",
    ("pql_won", "low"): "PQLs rarely buy: the definition is too loose; raise the threshold or "
    "require stronger signals (pql backtest shows what converters did)",
    ("pql_won", "high"): "PQLs buy very often: the definition is too tight and misses buyers; "
    "lower the threshold or add signals",
    ("pql_first", "low"): "many buyers were never PQLs first: add the signals converters show "
    "(pql backtest lists them)",
    ("bands", "low"): "scores barely separate buyers: re-weight the signals or retrain",
    ("first_touch", "high"): "sales reaches new PQLs slowly: route them to a rep within the hour "
    "(config routing)",
    ("flag_latency", "high"): "new PQLs reach the CRM late: turn on the intraday runs (config "
    "freshness) or check that the pql_fresh DAG keeps up",
}
#: Minutes from qualifying to the CRM flag that pass (the intraday runs' goal at p95).
FLAG_MINUTES = 15


def checks(
    per_user: pd.DataFrame,
    scores: pd.DataFrame,
    *,
    until: datetime,
    window_days: int,
    min_conversions: int,
    flagged: pd.Series | None = None,
) -> list[dict]:
    """The health checks of a weekly report ending at `until`.

    `per_user` is outcomes.attribute's frame; `scores` the week's snapshot (email, score).
    """
    u = with_scores(per_user, scores)
    first_seen = pd.to_datetime(u["first_seen"], utc=True)
    u["signup_week"] = first_seen.dt.tz_convert(None).dt.to_period("W-SUN").dt.start_time.dt.date
    u["signup_mature"] = first_seen + pd.Timedelta(days=window_days) <= pd.Timestamp(until)
    u["signup_matures"] = first_seen + pd.Timedelta(days=window_days)
    enough = min_conversions
    out = []

    # 1. Share of mature sign-ups that became PQLs (by the report's end).
    def share(f):
        m = f[f["signup_mature"]]
        return Rate(int(m["is_pql"].sum()), len(m))

    r = share(u)
    out.append(_rate_check(
        "share of sign-ups reaching PQL", "pql_share", r, "5-15%", r.k,
        lambda v: 0.05 <= v <= 0.15, lambda v: 0.03 <= v <= 0.25, lambda v: v < 0.05,
        _first(u, "signup_matures"), _trend(u, "signup_week", share), enough, "PQLs",
    ))  # fmt: skip

    # 2. Mature PQLs that won within their window.
    def pql_won(f):
        m = f[f["is_pql"] & f["mature"]]
        return Rate(int(m["won"].sum()), len(m))

    r = pql_won(u)
    out.append(_rate_check(
        "PQL → won", "pql_won", r, "15-30%", r.k,
        lambda v: 0.15 <= v <= 0.30, lambda v: 0.10 <= v <= 0.40, lambda v: v < 0.15,
        _first(u[u["is_pql"]], "window_end"), _trend(u, "cohort_week", pql_won), enough, "wins",
    ))  # fmt: skip

    # 3. Of everyone who bought before the report's end (inside a window or not), how many
    # had qualified by then.
    def pql_first(f):
        c = f[f["converted_at"].notna()]
        return Rate(int((c["qualified_at"] <= c["converted_at"]).sum()), len(c))

    r = pql_first(u)
    out.append(_rate_check(
        "conversions that were PQLs first", "pql_first", r, "most (70%+)", r.n,
        lambda v: v >= 0.70, lambda v: v >= 0.50, lambda v: True, "",
        _trend(u, "signup_week", pql_first, "no conversions"), enough, "conversions",
    ))  # fmt: skip

    out.append(_bands(u, enough))
    out.append(_first_touch(u, enough))
    if flagged is not None:
        out.append(_flag_latency(u, flagged, enough))
    return out


def _rate_check(name, key, r: Rate, benchmark, have, good, near, low, first_mature, trend,
                enough, counted) -> dict:  # fmt: skip
    """A rate judged against its benchmark once `have` (the conversions behind it) reaches
    `enough`; `low` says which way a miss goes (for the advice)."""
    if not r.n:
        status = TOO_EARLY
        detail = "too early: nobody to count yet" + (
            f" (the first window closes on {first_mature})" if first_mature else ""
        )
    elif have < enough:
        status = NOT_ENOUGH
        detail = f"not enough data to judge: {have} {counted} of {enough} needed"
    else:
        v = r.value
        status = "pass" if good(v) else ("warn" if near(v) else "fail")
        detail = ""
    advice = ""
    if status in ("warn", "fail"):
        advice = ADVICE.get((key, "low" if low(r.value) else "high"), "")
    return _row(name, key, r.value, r.k, r.n, r.interval, r.text(), benchmark, status, detail,
                advice, trend)  # fmt: skip


def _bands(u: pd.DataFrame, enough: int) -> dict:
    """The won rate of the top score band (80+) against the bottom one (<20), mature users."""

    def split(f):
        m = f[f["mature"]]
        top, bottom = m[m["score"] >= 80], m[m["score"] < 20]
        return Rate(int(top["won"].sum()), len(top)), Rate(int(bottom["won"].sum()), len(bottom))

    def ratio(top: Rate, bottom: Rate) -> float | None:
        return top.value / bottom.value if top.n and bottom.n and bottom.k else None

    top, bottom = split(u)
    text = f"top {top.text('no users')}; bottom {bottom.text('no users')}"
    value = ratio(top, bottom)
    if not top.n or not bottom.n:
        status, detail = TOO_EARLY, "too early: a band has no mature users yet"
    elif top.k + bottom.k < enough:
        status = NOT_ENOUGH
        detail = f"not enough data to judge: {top.k + bottom.k} wins of {enough} needed"
    elif bottom.k == 0:
        status, detail = "pass", "the bottom band has no wins at all"
    else:
        status = "pass" if value >= 5 else ("warn" if value >= 2 else "fail")
        detail = f"top converts {value:.1f}x the bottom"
    trend = []
    for _, f in _weeks(u, "cohort_week"):
        t, b = split(f)
        r = ratio(t, b)
        trend.append(TOO_EARLY if not t.n or not b.n else (f"{r:.1f}x" if r is not None else
                     f"{pct(t.value)} vs {pct(b.value)}"))  # fmt: skip
    advice = ADVICE[("bands", "low")] if status in ("warn", "fail") else ""
    return _row("top score band (80+) vs bottom (<20), won rate", "bands", value,
                top.k + bottom.k, top.n + bottom.n, None, text, "many times (5x+)", status,
                detail, advice, trend, unit="x")  # fmt: skip


def _first_touch(u: pd.DataFrame, enough: int) -> dict:
    """Median hours from qualifying to the first sales touch (meeting, or task when pulled)."""
    touch = "first_touch_at" if "first_touch_at" in u.columns else "meeting_at"
    kinds = "meeting or task" if touch == "first_touch_at" else "meeting"

    def hours(f) -> tuple[float | None, int]:
        p = f[f["is_pql"] & f[touch].notna()]
        h = (p[touch] - p["qualified_at"]).dt.total_seconds() / 3600
        return (float(np.median(h)) if len(h) else None), len(h)

    value, n = hours(u)
    if not n:
        status, detail, text = TOO_EARLY, "too early: no PQL has been touched yet", "no touches"
    else:
        text = f"{value:.1f} h (median of {n:,} touched PQLs)"
        if n < enough:
            status = NOT_ENOUGH
            detail = f"not enough data to judge: {n} touched PQLs of {enough} needed"
        else:
            status = "pass" if value <= 1 else ("warn" if value <= 24 else "fail")
            detail = ""
    trend = []
    for _, f in _weeks(u, "cohort_week"):
        v, k = hours(f)
        trend.append(f"{v:.1f} h ({k})" if k else "no touches")
    advice = ADVICE[("first_touch", "high")] if status in ("warn", "fail") else ""
    return _row(f"median hours from qualifying to first sales touch ({kinds})", "first_touch",
                value, n, n, None, text, "within 1 hour", status, detail, advice, trend,
                unit="hours")  # fmt: skip


def _flag_latency(u: pd.DataFrame, flagged: pd.Series, enough: int) -> dict:
    """Minutes from qualifying (the crossing event) to the flag in the CRM: the pipeline's own
    part of speed to lead, median and p95, and how many within FLAG_MINUTES."""
    at = pd.DataFrame({"email": flagged.index.astype(str).str.lower(),
                       "flagged_at": pd.to_datetime(flagged.to_numpy(), utc=True)})  # fmt: skip
    at = at.dropna().drop_duplicates("email")
    u = u.assign(email=u["email"].str.lower()).merge(at, on="email", how="left")

    def minutes(f) -> pd.Series:
        p = f[f["is_pql"] & f["flagged_at"].notna() & (f["flagged_at"] >= f["qualified_at"])]
        return (p["flagged_at"] - p["qualified_at"]).dt.total_seconds() / 60

    m = minutes(u)
    n, k = len(m), int((m <= FLAG_MINUTES).sum())
    value = float(np.percentile(m, 95)) if n else None
    if not n:
        status, detail, text = TOO_EARLY, "too early: no PQL flagged in the CRM yet", "no flags"
    else:
        text = (f"median {np.median(m):.0f} min, p95 {value:.0f} min; {k:,} of {n:,} PQLs "
                f"flagged within {FLAG_MINUTES} minutes")  # fmt: skip
        if n < enough:
            status = NOT_ENOUGH
            detail = f"not enough data to judge: {n} flagged PQLs of {enough} needed"
        else:
            status = "pass" if value <= FLAG_MINUTES else ("warn" if value <= 60 else "fail")
            detail = ""
    trend = []
    for _, f in _weeks(u, "cohort_week"):
        w = minutes(f)
        trend.append(f"p95 {np.percentile(w, 95):.0f} min ({len(w)})" if len(w) else "no flags")
    advice = ADVICE[("flag_latency", "high")] if status in ("warn", "fail") else ""
    return _row("minutes from qualifying to the PQL flag in the CRM (p95)", "flag_latency", value,
                k, n, None, text, f"within {FLAG_MINUTES} minutes", status, detail, advice,
                trend, unit="minutes")  # fmt: skip


def _weeks(u: pd.DataFrame, week_col: str):
    weeks = sorted(u[week_col].dropna().unique())[-TREND_WEEKS:]
    return [(w, u[u[week_col] == w]) for w in weeks]


def _trend(u: pd.DataFrame, week_col: str, metric: Callable[[pd.DataFrame], Rate],
           empty: str = TOO_EARLY) -> list[str]:  # fmt: skip
    return [metric(f).short(empty) for _, f in _weeks(u, week_col)]


def _first(f: pd.DataFrame, col: str) -> str:
    return f"{f[col].min():%Y-%m-%d}" if len(f) else ""


def _row(name, key, value, k, n, interval, text, benchmark, status, detail, advice, trend,
         unit="share") -> dict:  # fmt: skip
    low, high = interval or (float("nan"), float("nan"))
    return {
        "check": name,
        "key": key,
        "value": float("nan") if value is None else float(value),
        "k": int(k),
        "n": int(n),
        "low": low,
        "high": high,
        "unit": unit,
        "text": text,
        "benchmark": benchmark,
        "status": status,
        "detail": detail,
        "advice": advice,
        "trend": " → ".join(trend) if trend else "no weekly cohorts yet",
        "source": SOURCES[key],
    }
