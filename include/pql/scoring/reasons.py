"""Feature values in the words a sales rep reads in the CRM: "invited 4 teammates in 30 days"."""

from __future__ import annotations

import math
import re

import pandas as pd

from pql.config import Features, slug

# How the default tracked events read; any other event reads "<event> 3 times in 14 days".
PHRASES = {
    "Core Feature Used": "used the core feature {n} time{s} in {w} days",
    "Teammate Invited": "invited {n} teammate{s} in {w} days",
    "Integration Connected": "connected {n} integration{s} in {w} days",
    "Usage Limit Hit": "hit the usage limit {n} time{s} in {w} days",
    "Pricing Page Viewed": "viewed pricing {n} time{s} in {w} days",
    "Billing Page Viewed": "viewed billing {n} time{s} in {w} days",
    "Report Exported": "exported {n} report{s} in {w} days",
    "Project Created": "created {n} project{s} in {w} days",
}
_WINDOWED = re.compile(r"^(?P<base>.+)_(?P<w>\d+)d$")


def phrase(feature: str, value, features: Features) -> str:
    """One feature's value in plain words (catalogue features and firmographics)."""
    if _missing(value):
        return f"no {feature.replace('_', ' ')}"
    simple = {
        "employees": lambda v: f"{int(v):,} employees",
        "industry": lambda v: f"{v} industry",
        "country": lambda v: f"based in {v}",
        "revenue_band": lambda v: f"revenue {v}",
        "plan": lambda v: f"on the {v} plan",
        "free_email": lambda v: "signed up with a free email address" if v else "work email",
        "days_since_last_seen": lambda v: f"last active {_days(v)} ago",
        "days_since_first_seen": lambda v: f"signed up {_days(v)} ago",
    }
    if feature in simple:
        return simple[feature](value)
    m = _WINDOWED.match(feature)
    if not m:
        return f"{feature.replace('_', ' ')}: {value}"
    base, w, n = m["base"], int(m["w"]), _num(value)
    s = "" if n == 1 else "s"
    if base == "active_days":
        return f"active {n} of the last {w} days"
    for d in features.distinct:
        if d.name == base:
            return f"{n} different {base.replace('_', ' ')} in {w} days"
    for e in features.events:
        if slug(e) == base:
            return PHRASES.get(e, e + " {n} time{s} in {w} days").format(n=n, s=s, w=w)
    return f"{base.replace('_', ' ')} {n} in {w} days"


def _missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


def _num(v) -> int | float:
    f = float(v)
    return int(f) if f.is_integer() else round(f, 1)


def _days(v) -> str:
    d = int(float(v))
    return "less than a day" if d == 0 else ("1 day" if d == 1 else f"{d} days")


def join_top(texts: list[list], order, keep, limit: int) -> list[str]:
    """Per row, the texts of the first `limit` columns in `order` where `keep` holds, "; "-joined.

    texts[c][r] is column c's phrase for row r; order and keep are (rows, columns) arrays.
    """
    out = []
    for r in range(len(order)):
        chosen = [texts[c][r] for c in order[r] if keep[r, c]][:limit]
        out.append("; ".join(chosen))
    return out


def cached_format(values, render) -> list:
    """render(value) for each value, computed once per distinct value (scores repeat a lot)."""
    cache: dict = {}
    out = []
    for v in values:
        key = None if _missing(v) else v
        if key not in cache:
            cache[key] = render(key)
        out.append(cache[key])
    return out
