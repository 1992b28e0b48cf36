"""The weekly conversion report: computed once (`compute`), written as CSV files, a summary and a
self-contained HTML page per week (`write`).

Every figure on the page, in the CSV files, the CLI, the e-mail and Slack comes from `compute`,
so they agree; every rate is k of n with its 95% interval, over mature users only (see
outcomes.attribute for the definitions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from pql.lake import Lake, atomic_dir
from pql.pages import TEMPLATES
from pql.rates import Rate, lift, pct
from pql.report import charts, health, metrics, outcomes

TITLES = {
    "all": "All users",
    "cohort_week": "Weekly cohort",
    "model_version": "Model version that qualified the PQL",
    "size_band": "Company size (employees)",
    "industry": "Industry",
    "source": "Source (where the user was first seen)",
    "country": "Country",
    "plan": "Plan",
    "revenue_band": "Company revenue",
    "accounts": "Accounts: product-qualified (PQA) or not",
}


@dataclass
class Weekly:
    """Everything a week's report shows."""

    week: date
    until: datetime
    window_days: int
    per_user: pd.DataFrame
    breakdowns: pd.DataFrame
    health: list[dict]
    charts: list[dict]
    summary: dict
    models: list[dict] = field(default_factory=list)


def compute(
    users: pd.DataFrame,
    meetings: pd.DataFrame,
    won: pd.DataFrame,
    *,
    week: date,
    window_days: int,
    tasks: pd.DataFrame | None = None,
    segments: list[str] | tuple[str, ...] = (),
    min_conversions: int = 10,
    excluded_outcomes: list[str] | tuple[str, ...] = ("CANCELED", "NO_SHOW"),
    versions: pd.DataFrame | None = None,
    pqa: pd.DataFrame | None = None,
    models: list[dict] | None = None,
    flagged: pd.Series | None = None,
) -> Weekly:
    """The report of the week starting Monday `week`, from the users' snapshot at its end and
    the CRM's outcomes up to then (outcomes.as_of); `flagged`: email → when the CRM first held
    the PQL's flag (crm.ledger.flag_times), for the pipeline's own latency."""
    until = datetime.combine(week + timedelta(days=7), datetime.min.time(), UTC)
    seen = outcomes.as_of(  # nothing after the week's end, whatever the caller passed
        {"meetings": meetings, "won": won, **({"tasks": tasks} if tasks is not None else {})},
        until,
    )
    meetings, won, tasks = seen["meetings"], seen["won"], seen.get("tasks")
    kept = {"until": until, "excluded_outcomes": excluded_outcomes}
    per_user = outcomes.attribute(users, meetings, won, window_days, tasks=tasks, **kept)
    accounts = (
        metrics.account_attribution(users, meetings, won, pqa, window_days, **kept)
        if pqa is not None
        else None
    )
    breakdowns = metrics.all_breakdowns(
        metrics.segmented(per_user, users, versions), list(segments), accounts=accounts
    )
    checks = health.checks(per_user, users, until=until, window_days=window_days,
                           min_conversions=min_conversions, flagged=flagged)  # fmt: skip
    drawn = charts.build(breakdowns, per_user, users)
    summary = headline(per_user, breakdowns, checks, week, until, window_days)
    return Weekly(week, until, window_days, per_user, breakdowns, checks, drawn, summary,
                  models or [])  # fmt: skip


def _rate(table: pd.DataFrame, group: str, kind: str) -> Rate:
    row = table[table["group"] == group]
    if row.empty:
        return Rate(0, 0)
    return Rate(int(row.iloc[0][kind]), int(row.iloc[0]["mature_users"]))


def headline(
    per_user: pd.DataFrame,
    breakdowns: pd.DataFrame,
    checks: list[dict],
    week: date,
    until: datetime,
    window_days: int,
) -> dict:
    """What a CEO reads in ten seconds: this week's new PQLs, mature PQL→meeting and →won
    against non-PQLs with intervals, the lift, and the one check that needs attention."""
    start = pd.Timestamp(week, tz="UTC")
    this_week = per_user["start"] >= start
    signed_up = pd.to_datetime(per_user["first_seen"], utc=True) >= start
    total = breakdowns[breakdowns["dimension"] == "all"]
    rates = {
        f"{side}_{kind}": _rate(total, group, col)
        for side, group in (("pql", "PQL"), ("non_pql", "non-PQL"))
        for kind, col in (("meeting", "meetings"), ("won", "won"))
    }
    open_pqls = int((per_user["is_pql"] & ~per_user["mature"]).sum())
    open_rest = int((~per_user["is_pql"] & ~per_user["mature"]).sum())
    new_pqls = int((per_user["is_pql"] & this_week).sum())
    lines = [
        f"Week of {week}: {new_pqls:,} new PQLs; {int(signed_up.sum()):,} sign-ups this week; "
        f"{int(per_user['is_pql'].sum()):,} PQLs of {len(per_user):,} users in all."
    ]
    pqls = rates["pql_won"]
    if pqls.n:
        for kind, label in (("meeting", "meeting"), ("won", "won")):
            a, b = rates[f"pql_{kind}"], rates[f"non_pql_{kind}"]
            lines.append(
                f"PQL→{label} {a.text()} vs non-PQL {b.text()}: {lift(a, b)}"
                + (" the non-PQL rate." if lift(a, b).endswith("x") else ".")
            )
        lines.append(
            f"Counted: users whose {window_days}-day window has closed. Still inside it: "
            f"{open_pqls:,} PQLs and {open_rest:,} non-PQLs (their rates come later)."
        )
    else:
        closes = per_user.loc[per_user["is_pql"], "window_end"]
        when = f" on {closes.min():%Y-%m-%d}" if len(closes) else " once someone qualifies"
        lines.append(
            f"Too early to judge conversion: no PQL's {window_days}-day window has closed yet; "
            f"the first closes{when}. {open_pqls:,} PQLs and {open_rest:,} non-PQLs are inside "
            "their window."
        )
    attention = _attention(checks)
    if attention:
        lines.append(
            f"Needs attention — {attention['check']}: {attention['text']} ({attention['status']}"
            f", benchmark {attention['benchmark']}). {_sentence(attention['advice'])}"
        )
    else:
        states = pd.Series([c["status"] for c in checks]).value_counts()
        lines.append("Health checks: " + ", ".join(f"{n} {s}" for s, n in states.items()) + ".")
    won, other = rates["pql_won"], rates["non_pql_won"]
    title = f"PQL weekly report, week of {week}: " + (
        f"PQL→won {won.short()} vs non-PQL {other.short()}" if won.n else "too early to judge"
    ) + (f" — needs attention: {attention['check']}" if attention else "")  # fmt: skip
    figures = {
        key: {"k": r.k, "n": r.n, "rate": r.value, "low": (r.interval or (None, None))[0],
              "high": (r.interval or (None, None))[1], "text": r.text()}
        for key, r in rates.items()
    }  # fmt: skip
    return {
        "week": week.isoformat(),
        "until": until.isoformat(),
        "title": title,
        "lines": lines,
        "new_pqls": new_pqls,
        "pqls": int(per_user["is_pql"].sum()),
        "users": len(per_user),
        "still_open_pqls": open_pqls,
        "rates": {k: {f: v for f, v in d.items() if v is not None} for k, d in figures.items()},
        "attention": attention or {},
        "failing": [c["check"] for c in checks if c["status"] == "fail"],
        "warning": [c["check"] for c in checks if c["status"] == "warn"],
    }


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else ""


def _attention(checks: list[dict]) -> dict | None:
    """The one check a reader should act on: the first failing one, else the first warning."""
    for status in ("fail", "warn"):
        for c in checks:
            if c["status"] == status:
                return {k: c[k] for k in ("check", "status", "text", "benchmark", "advice")}
    return None


def write(lake: Lake, weekly: Weekly, *, generated_at: datetime) -> Path:
    """reports/week=W/: index.html, summary.json, totals.csv (all users), cohorts.csv,
    metrics.csv (every breakdown), health.csv, models.csv and chart_<id>.csv; returns the HTML."""
    b = weekly.breakdowns
    html = TEMPLATES.get_template("report.html").render(
        week=weekly.week,
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        window_days=weekly.window_days,
        summary=weekly.summary,
        health=weekly.health,
        charts=weekly.charts,
        models=weekly.models,
        totals=_rows(b[b["dimension"] == "all"]),
        cohorts=_rows(b[b["dimension"] == "cohort_week"]),
        breakdowns=[
            {"id": dim, "title": TITLES.get(dim, dim), "rows": _rows(g)}
            for dim, g in b.groupby("dimension", sort=False)
            if dim not in ("all", "cohort_week")
        ],
    )
    with atomic_dir(lake.reports(weekly.week)) as tmp:
        b[b["dimension"] == "all"].to_csv(tmp / "totals.csv", index=False)
        b[b["dimension"] == "cohort_week"].to_csv(tmp / "cohorts.csv", index=False)
        b.to_csv(tmp / "metrics.csv", index=False)
        pd.DataFrame(weekly.health).to_csv(tmp / "health.csv", index=False)
        if weekly.models:
            pd.DataFrame(weekly.models).to_csv(tmp / "models.csv", index=False)
        for c in weekly.charts:  # each chart's numbers, to check or chart elsewhere
            c["data"].to_csv(tmp / f"chart_{c['id']}.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(weekly.summary, indent=2))
        (tmp / "index.html").write_text(html)
    return lake.reports(weekly.week) / "index.html"


def _rows(table: pd.DataFrame) -> list[dict]:
    """Table rows with every figure as the page shows it (rounded once, never None or NaN)."""
    out = []
    for r in table.to_dict("records"):
        n = int(r["mature_users"])
        early = r["note"] or "too early"
        out.append(
            {
                **r,
                "meeting_text": Rate(int(r["meetings"]), n).short(early),
                "meeting_ci": _ci(r["meeting_low"], r["meeting_high"]) if n else "",
                "won_text": Rate(int(r["won"]), n).short(early),
                "won_ci": _ci(r["won_low"], r["won_high"]) if n else "",
                "revenue_text": f"{r['won_revenue']:,.0f}",
                "days_meeting": _median(r["median_days_to_meeting"], r["meetings"], "d"),
                "days_won": _median(r["median_days_to_won"], r["won"], "d"),
                "hours_touch": _median(r["median_hours_to_first_touch"], r["touched"], "h"),
                "immature": n == 0,
            }
        )
    return out


def _ci(low: float, high: float) -> str:
    return f"{pct(low)}–{pct(high)}"


def _median(value: float, n: int, unit: str) -> str:
    return "none yet" if pd.isna(value) else f"{value:.1f} {unit} ({int(n):,})"
