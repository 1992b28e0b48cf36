"""The weekly report's charts as data: each a title, category labels and one or more series.

The page draws them as inline SVG (templates/report.html), so it stays one self-contained file.
"""

from __future__ import annotations

import pandas as pd

BANDS = [0, 20, 40, 60, 80, 101]
BAND_LABELS = ["0-19", "20-39", "40-59", "60-79", "80-100"]
DAY_BINS = [0, 7, 14, 30, 60, 90, 10_000]
DAY_LABELS = ["<7 d", "7-13 d", "14-29 d", "30-59 d", "60-89 d", "90+ d"]


def _chart(chart_id: str, title: str, labels: list, series: dict[str, list], unit: str) -> dict:
    values = [v for vs in series.values() for v in vs if v is not None]
    return {
        "id": chart_id,
        "title": title,
        "labels": [str(x) for x in labels],
        "series": [{"name": k, "values": v} for k, v in series.items()],
        "max": max(values, default=0) or 1,
        "unit": unit,
    }


def build(per_user: pd.DataFrame, scores: pd.DataFrame) -> list[dict]:
    """Funnel, won rate by cohort and by score band, and days from qualifying to a win."""
    u = per_user.merge(scores[["email", "score"]].drop_duplicates("email"), on="email", how="left")
    charts = [
        _chart(
            "funnel",
            "Funnel: sign-ups → PQLs → meetings → won",
            ["sign-ups", "PQLs", "PQL meetings", "PQL wins"],
            {
                "users": [
                    len(u),
                    int(u["is_pql"].sum()),
                    int((u["is_pql"] & u["meeting"]).sum()),
                    int((u["is_pql"] & u["won"]).sum()),
                ]
            },
            "count",
        )  # fmt: skip
    ]
    weeks = sorted(u["cohort_week"].dropna().unique())
    series = {}
    for group, mask in (("PQL", u["is_pql"]), ("non-PQL", ~u["is_pql"])):
        rates = u[mask].groupby("cohort_week")["won"].mean()
        series[group] = [None if w not in rates else round(float(rates[w]), 4) for w in weeks]
    charts.append(_chart("by_cohort", "Won rate by weekly cohort", weeks, series, "share"))
    band = pd.cut(u["score"], BANDS, right=False, labels=BAND_LABELS)
    by_band = u.groupby(band, observed=False)["won"].mean()
    charts.append(
        _chart(
            "by_band",
            "Won rate by score band",
            BAND_LABELS,
            {"won rate": [None if pd.isna(v) else round(float(v), 4) for v in by_band]},
            "share",
        )
    )
    winners = u[u["is_pql"] & u["won"]]
    days = (winners["won_at"] - pd.to_datetime(winners["qualified_at"], utc=True)).dt.days
    counts = pd.cut(days, DAY_BINS, right=False, labels=DAY_LABELS).value_counts(sort=False)
    charts.append(
        _chart(
            "time_to_won",
            "Days from qualifying to a win (PQLs)",
            DAY_LABELS,
            {"PQL wins": [int(counts.get(x, 0)) for x in DAY_LABELS]},
            "count",
        )
    )
    return charts
