"""A synthetic world written straight into a lake: canonical events and the CRM's outcomes.

For scoring work (tests, backtests, the quality benchmark) that needs months of history without
running months of exports: events go through the Mixpanel parser the pipeline uses, outcomes
in the layout the weekly outcomes pull writes. Only outcomes before `known_until` are written,
as a CRM would know them then.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pql.enrich import firmographics
from pql.events.canonical import SCHEMA
from pql.events.mixpanel_lines import parse_line
from pql.lake import Lake, atomic_dir
from sandbox import world
from sandbox.world import WorldSpec


def write(
    spec: WorldSpec,
    lake: Lake,
    *,
    known_until: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Events of every user (one partition per day), outcomes per week, firmographics."""
    known_until = known_until or spec.end
    received = spec.end
    per_day: dict[date, list[dict]] = {}
    meetings, won, n = [], [], 0
    accts = world.accounts(spec)
    for k, user in enumerate(world.users(spec, accts), start=1):
        for line in world.events(spec, user):
            row, _ = parse_line(json.dumps(line), "mixpanel", ["email"], [], received)
            per_day.setdefault(row["ts"].date(), []).append(row)
            n += 1
        o = world.outcome(spec, user)
        if o.meeting_at and o.meeting_at < known_until:
            meetings.append(
                {"meeting_id": f"m{k}", "email": user.email, "meeting_at": o.meeting_at}
            )
        if o.won_at and o.won_at < known_until:
            won.append(
                {"deal_id": f"d{k}", "email": user.email, "won_at": o.won_at, "amount": o.amount}
            )
        if progress and k % 1000 == 0:
            progress(k)
    for day, rows in per_day.items():
        with atomic_dir(lake.events("mixpanel", day)) as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp / "part-0.parquet")
    _write_outcomes(lake, meetings, won)
    firmographics.write(lake, company_facts(accts))
    return {"events": n, "days": len(per_day), "meetings": len(meetings), "won": len(won)}


def company_facts(accts: list[world.Account]) -> pd.DataFrame:
    """What an enrichment provider knows about the world's companies."""
    return pd.DataFrame(
        {
            "domain": [a.domain for a in accts],
            "employees": [a.employees for a in accts],
            "industry": [a.industry for a in accts],
            "country": [a.country for a in accts],
        }
    )


def _write_outcomes(lake: Lake, meetings: list[dict], won: list[dict]) -> None:
    m = pd.DataFrame(meetings, columns=["meeting_id", "email", "meeting_at"])
    w = pd.DataFrame(won, columns=["deal_id", "email", "won_at", "amount"])
    weeks = {_week(t) for t in m["meeting_at"]} | {_week(t) for t in w["won_at"]}
    for week in sorted(weeks):
        with atomic_dir(lake.outcomes(week)) as tmp:
            m[m["meeting_at"].map(_week) == week].to_parquet(tmp / "meetings.parquet", index=False)
            w[w["won_at"].map(_week) == week].to_parquet(tmp / "won_deals.parquet", index=False)


def _week(t: datetime) -> date:
    d = t.astimezone(UTC).date()
    return d - timedelta(days=d.weekday())
