"""The weekly report's charts, drawn with matplotlib as inline SVG (the page stays one file).

Each chart is a dict: id, title, the SVG text, and the table it was drawn from (kept beside the
page as chart_<id>.csv). Rates are the report's own (metrics.breakdown: mature users only, 95%
Wilson intervals as error bars); a cohort with nobody mature yet is drawn as a grey outline
labelled "too early", never as a low bar.
"""

from __future__ import annotations

import io
import re

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from pql import rates
from pql.report.metrics import with_scores
from pql.scoring import BAND_LABELS, BANDS

DAY_BINS = [0, 7, 14, 30, 60, 90, 10_000]
DAY_LABELS = ["<7 d", "7-13 d", "14-29 d", "30-59 d", "60-89 d", "90+ d"]
COLORS = {"PQL": "#3b6fc4", "non-PQL": "#c9a13b"}
GREY = "#b8b8b8"
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
         "axes.spines.right": False, "svg.hashsalt": "pql"}  # fmt: skip


def _svg(fig: Figure) -> str:
    """The figure as an <svg> element: text kept as text, no XML prologue, stable ids."""
    buf = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 6.4, height: float = 3.0) -> tuple[Figure, object]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        return fig, fig.add_subplot()


def _cohort_chart(cohorts: pd.DataFrame, kind: str, title: str) -> dict:
    """Grouped bars per weekly cohort, PQL and non-PQL, with error bars; too early greyed."""
    weeks = list(dict.fromkeys(cohorts["value"]))
    p = _prefix(kind)
    keep = ["value", "group", "mature_users", kind, f"{p}_rate", f"{p}_low", f"{p}_high", "note"]
    data = cohorts[keep].rename(columns={"value": "cohort_week"})
    fig, ax = _figure(max(6.4, 0.9 * len(weeks) + 1.5))
    x = np.arange(len(weeks))
    groups = ["PQL", "non-PQL"]
    width = 0.38
    top = 0.0
    for i, group in enumerate(groups):
        g = data[data["group"] == group].set_index("cohort_week").reindex(weeks)
        rate = g[f"{_prefix(kind)}_rate"].to_numpy(dtype=float)
        low = g[f"{_prefix(kind)}_low"].to_numpy(dtype=float)
        high = g[f"{_prefix(kind)}_high"].to_numpy(dtype=float)
        pos = x + (i - 0.5) * width
        ok = ~np.isnan(rate)
        if ok.any():
            ax.bar(pos[ok], 100 * rate[ok], width, color=COLORS[group])
            err = np.vstack([rate[ok] - low[ok], high[ok] - rate[ok]]) * 100
            ax.errorbar(pos[ok], 100 * rate[ok], yerr=err, fmt="none", ecolor="#333",
                        capsize=2, linewidth=0.8)  # fmt: skip
            top = max(top, float(np.nanmax(100 * high[ok])))
        for p, mature in zip(pos, g["mature_users"].to_numpy(dtype=float), strict=True):
            if not mature > 0:  # no one in the group (NaN) or no one mature yet (0)
                label = "too early" if mature == 0 else "none"
                ax.annotate(label, (p, 0), xytext=(0, 3), textcoords="offset points",
                            rotation=90, ha="center", va="bottom", color=GREY,
                            fontsize=7, annotation_clip=False)  # fmt: skip
    ax.set_xlim(-0.6, len(weeks) - 0.4)  # every cohort in view, drawn or not
    ax.set_xticks(x, [str(w) for w in weeks], rotation=30, ha="right")
    ax.set_xlabel("weekly cohort (week of qualifying, or of sign-up for non-PQLs)")
    ax.set_ylabel(f"{'meeting' if kind == 'meetings' else 'won'} rate, % of mature users")
    ax.set_ylim(0, max(top * 1.15, 5))
    ax.legend(handles=[Patch(color=COLORS[g], label=g) for g in groups], frameon=False,
              loc="upper right")  # fmt: skip
    ax.set_title(title, loc="left", fontsize=10)
    return {"id": f"{_prefix(kind)}_by_cohort", "title": title, "svg": _svg(fig), "data": data}


def _prefix(kind: str) -> str:
    return "meeting" if kind == "meetings" else "won"


def _band_chart(per_user: pd.DataFrame) -> dict:
    """Won rate of mature users by score band (bands in their order), with error bars."""
    m = per_user[per_user["mature"]]
    band = pd.cut(m["score"], BANDS, right=False, labels=BAND_LABELS)
    g = m.groupby(band, observed=False)["won"]
    data = pd.DataFrame({"band": BAND_LABELS, "users": g.size().reindex(BAND_LABELS).fillna(0),
                         "won": g.sum().reindex(BAND_LABELS).fillna(0)})  # fmt: skip
    data = data.join(rates.columns("won", data["won"], data["users"]))
    title = "Won rate by score band (mature users)"
    fig, ax = _figure()
    x = np.arange(len(BAND_LABELS))
    rate = data["won_rate"].to_numpy(dtype=float)
    ok = ~np.isnan(rate)
    if ok.any():
        ax.bar(x[ok], 100 * rate[ok], 0.6, color=COLORS["PQL"])
        err = np.vstack([rate[ok] - data["won_low"][ok], data["won_high"][ok] - rate[ok]]) * 100
        ax.errorbar(x[ok], 100 * rate[ok], yerr=err, fmt="none", ecolor="#333", capsize=3,
                    linewidth=0.8)  # fmt: skip
    ticks = [f"{b}\n{int(k)}/{int(n)}" if n else f"{b}\nno users"
             for b, n, k in zip(BAND_LABELS, data["users"], data["won"], strict=True)]  # fmt: skip
    ax.set_xticks(x, ticks)
    ax.set_xlabel("score at the week's end (band; wins / mature users)")
    ax.set_ylabel("won rate, % of mature users")
    ax.set_ylim(0, max(float(np.nanmax(100 * data["won_high"])) * 1.15 if ok.any() else 0, 5))
    ax.set_title(title, loc="left", fontsize=10)
    return {"id": "won_by_band", "title": title, "svg": _svg(fig), "data": data}


def _days_chart(per_user: pd.DataFrame) -> dict:
    """How long PQLs took from qualifying to a win."""
    winners = per_user[per_user["is_pql"] & per_user["won"]]
    days = (winners["won_at"] - winners["qualified_at"]).dt.total_seconds() / 86400
    counts = pd.cut(days, DAY_BINS, right=False, labels=DAY_LABELS).value_counts(sort=False)
    data = pd.DataFrame({"days": DAY_LABELS, "pql_wins": [int(counts.get(x, 0))
                                                          for x in DAY_LABELS]})  # fmt: skip
    title = f"Days from qualifying to a win ({len(winners):,} PQL wins)"
    fig, ax = _figure()
    ax.bar(np.arange(len(DAY_LABELS)), data["pql_wins"], 0.6, color=COLORS["PQL"])
    ax.set_xticks(np.arange(len(DAY_LABELS)), DAY_LABELS)
    ax.set_xlabel("days from qualifying to the won deal")
    ax.set_ylabel("PQL wins")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, loc="left", fontsize=10)
    return {"id": "days_to_won", "title": title, "svg": _svg(fig), "data": data}


def build(breakdowns: pd.DataFrame, per_user: pd.DataFrame, scores: pd.DataFrame) -> list[dict]:
    """The report's charts from its breakdowns (per weekly cohort) and per-user attribution."""
    u = with_scores(per_user, scores)
    cohorts = breakdowns[breakdowns["dimension"] == "cohort_week"]
    return [
        _cohort_chart(cohorts, "won", "PQL → won by weekly cohort, against non-PQLs"),
        _cohort_chart(cohorts, "meetings", "PQL → meeting by weekly cohort, against non-PQLs"),
        _band_chart(u),
        _days_chart(u),
    ]


def text_of(svg: str) -> str:
    """The words an SVG chart shows (tests and accessibility checks read them)."""
    return " ".join(re.findall(r">([^<>]+)</text>", svg))
