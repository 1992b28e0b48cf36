"""The weekly conversion report: CSV files and a self-contained HTML page per week."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from pql.lake import Lake, atomic_dir

TEMPLATES = Environment(loader=PackageLoader("pql", "templates"), autoescape=select_autoescape())


def write(
    lake: Lake,
    week: date,
    cohorts: pd.DataFrame,
    overall: pd.DataFrame,
    *,
    generated_at: datetime,
    window_days: int,
    health: list[dict] | None = None,
    charts: list[dict] | None = None,
    models: list[dict] | None = None,
    metrics: pd.DataFrame | None = None,
) -> Path:
    """Write reports/week=W/{cohorts.csv, totals.csv, health.csv, metrics.csv, index.html};
    returns the HTML."""
    html = TEMPLATES.get_template("report.html").render(
        health=health or [],
        charts=charts or [],
        models=models or [],
        breakdowns=_breakdowns(metrics),
        week=week,
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        window_days=window_days,
        totals=overall.to_dict("records"),
        cohorts=cohorts.to_dict("records"),
    )
    with atomic_dir(lake.reports(week)) as tmp:
        cohorts.to_csv(tmp / "cohorts.csv", index=False)
        overall.to_csv(tmp / "totals.csv", index=False)
        if health:
            pd.DataFrame(health).to_csv(tmp / "health.csv", index=False)
        if models:
            pd.DataFrame(models).to_csv(tmp / "models.csv", index=False)
        if metrics is not None:
            metrics.to_csv(tmp / "metrics.csv", index=False)
        for c in charts or []:  # each chart's numbers, to check or chart elsewhere
            data = {"label": c["labels"], **{s["name"]: s["values"] for s in c["series"]}}
            pd.DataFrame(data).to_csv(tmp / f"chart_{c['id']}.csv", index=False)
        (tmp / "index.html").write_text(html)
    return lake.reports(week) / "index.html"


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


def _breakdowns(metrics: pd.DataFrame | None) -> list[dict]:
    """One table per dimension, in the order computed (NaN → None for the template)."""
    if metrics is None or metrics.empty:
        return []
    rows = metrics.astype(object).where(metrics.notna(), None)
    return [
        {"id": dim, "title": TITLES.get(dim, dim), "rows": g.to_dict("records")}
        for dim, g in rows.groupby("dimension", sort=False)
    ]
