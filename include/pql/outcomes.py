"""CRM outcomes (meetings, won deals, sales tasks) joined to PQL history: conversion by cohort.

The CRM side is pulled incrementally into a cumulative store in the lake (lake.outcome_store):
meetings, won deals and completed tasks keyed by CRM id, and a watermark. Each run asks the
CRM (pql.crm.hubspot_outcomes or pql.crm.salesforce_outcomes) only for records modified since
the watermark minus a safety margin and replaces those records' rows; the first run, and a
periodic or requested full pull, take everything and replace the store whole. Every frame
has one row per (record, person email); the report reads the store as of the week's end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pandas as pd

from pql.frames import among
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)

# kind -> (store file, id column, time column, columns)
KINDS = {
    "meetings": ("meetings.parquet", "meeting_id", "meeting_at",
                 ["meeting_id", "email", "meeting_at", "outcome"]),
    "won": ("won_deals.parquet", "deal_id", "won_at", ["deal_id", "email", "won_at", "amount"]),
    "tasks": ("tasks.parquet", "task_id", "task_at", ["task_id", "email", "task_at"]),
}  # fmt: skip
STATE = "state.json"


@dataclass(frozen=True)
class Changes:
    """What one pull found for a kind: the rows to hold, and the id of every record it saw.

    Rows held for a seen id are replaced by that id's new rows (none when the record was
    deleted, is no longer closed-won or completed, or lost its people)."""

    rows: pd.DataFrame
    seen: set[str]


def _typed(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    _, id_col, at_col, columns = KINDS[kind]
    out = frame.reindex(columns=columns).copy()
    out[id_col] = out[id_col].astype(str)
    out["email"] = out["email"].astype(str).str.lower()
    out[at_col] = pd.to_datetime(out[at_col], utc=True).astype("datetime64[us, UTC]")
    if "amount" in out:
        out["amount"] = out["amount"].astype(float)
    if "outcome" in out:  # a meeting's outcome as the CRM says it (SCHEDULED, CANCELED, ...)
        out["outcome"] = out["outcome"].astype("string").str.upper()
    return out


def _sorted(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    _, id_col, at_col, _ = KINDS[kind]
    frame = frame.drop_duplicates([id_col, "email"], keep="last")
    return frame.sort_values([at_col, id_col, "email"]).reset_index(drop=True)


def empty(kind: str) -> pd.DataFrame:
    return _typed(pd.DataFrame(columns=KINDS[kind][3]), kind)


def load_store(lake: Lake, crm: str) -> tuple[dict[str, pd.DataFrame], dict]:
    """The store's frames by kind (empty when never pulled) and its state (watermark...)."""
    folder = lake.outcome_store(crm)
    state = json.loads((folder / STATE).read_text()) if (folder / STATE).exists() else {}
    frames = {}
    for kind, (name, *_) in KINDS.items():
        path = folder / name
        frames[kind] = _typed(pd.read_parquet(path), kind) if path.exists() else empty(kind)
    return frames, state


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def refresh(
    lake: Lake,
    crm: str,
    pull: Callable[[datetime | None], dict[str, Changes]],
    *,
    margin: timedelta = timedelta(hours=1),
    full_every: timedelta | None = timedelta(days=28),
    full: bool = False,
    now: datetime | None = None,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Bring the CRM's outcome store up to date and return it with what the pull did.

    `pull(since)` asks the CRM for what changed at/after `since` (everything when None). The
    pull is full on the first run, when `full`, or when the last full pull is older than
    `full_every` (None: never again): that is when deleted records the CRM cannot report
    (HubSpot's archived ones) leave. Otherwise it starts at the previous run's start minus
    `margin` (clock skew, search indexing delay, long transactions). Store and watermark are
    written together, atomically: a failed pull leaves the previous store and watermark.
    """
    now = now or datetime.now(UTC)
    held, state = load_store(lake, crm)
    watermark = state.get("watermark")
    last_full = state.get("full_pull_at")
    overdue = (
        full_every is not None
        and last_full is not None
        and now - datetime.fromisoformat(last_full) >= full_every
    )
    since = None if (full or watermark is None or overdue) else (
        datetime.fromisoformat(watermark) - margin
    )  # fmt: skip
    changes = pull(since)
    frames, stats = {}, {"pull": "full" if since is None else "incremental",
                         "since": None if since is None else _iso(since)}  # fmt: skip
    for kind, (_, id_col, _, _) in KINDS.items():
        got = changes.get(kind) or Changes(empty(kind), set())
        new = _typed(got.rows, kind)
        if since is None:
            frames[kind] = _sorted(new, kind)
        else:
            old = held[kind]
            keep = old[~among(old[id_col], got.seen | set(new[id_col]))]
            parts = [f for f in (keep, new) if len(f)]
            frames[kind] = _sorted(pd.concat(parts) if parts else empty(kind), kind)
        stats[f"{kind}_pulled"] = len(got.seen)
        stats[f"{kind}_held"] = len(frames[kind])
    state = {
        "crm": crm,
        "watermark": _iso(now),
        "full_pull_at": _iso(now) if since is None else last_full,
        "last_pull": stats,
    }
    with atomic_dir(lake.outcome_store(crm)) as tmp:
        for kind, (name, *_) in KINDS.items():
            frames[kind].to_parquet(tmp / name, index=False)
        (tmp / STATE).write_text(json.dumps(state, indent=2))
    log.info("outcome store %s: %s", crm, stats)
    return frames, stats


def as_of(frames: dict[str, pd.DataFrame], until: datetime) -> dict[str, pd.DataFrame]:
    """The store as a report up to `until` sees it: only outcomes before `until`."""
    cut = pd.Timestamp(until)
    out = {}
    for kind, frame in frames.items():
        at_col = KINDS[kind][2]
        out[kind] = frame[frame[at_col] < cut].reset_index(drop=True)
    return out


def save(
    lake: Lake,
    week: date,
    meetings: pd.DataFrame,
    won: pd.DataFrame,
    tasks: pd.DataFrame | None = None,
) -> str:
    """Keep the week's pulled outcomes in the lake (replacing any earlier pull of that week)."""
    with atomic_dir(lake.outcomes(week)) as tmp:
        meetings.to_parquet(tmp / "meetings.parquet", index=False)
        won.to_parquet(tmp / "won_deals.parquet", index=False)
        if tasks is not None:
            tasks.to_parquet(tmp / "tasks.parquet", index=False)
    return str(lake.outcomes(week))


def week_start(t: date) -> date:
    return t - timedelta(days=t.weekday())


def attribute(
    users: pd.DataFrame,
    meetings: pd.DataFrame,
    won: pd.DataFrame,
    window_days: int,
    tasks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per user: PQL or not, its cohort week, and whether a meeting / win followed in the window.

    PQLs start at their first qualification, everyone else at sign-up (first seen); only
    outcomes on or after the start and within `window_days` of it count. Given the sales
    `tasks` (task_id, email, task_at: completed tasks), `first_touch_at` is the earliest
    meeting or task in that span (NaT if none).
    """
    u = users[users["email"].notna()][["email", "first_seen", "qualified_at"]].copy()
    u["is_pql"] = u["qualified_at"].notna()
    u["start"] = pd.to_datetime(u["qualified_at"].where(u["is_pql"], u["first_seen"]), utc=True)
    u["cohort_week"] = u["start"].dt.tz_convert(None).dt.to_period("W-SUN").dt.start_time.dt.date
    window = pd.Timedelta(days=window_days)
    for label, frame, col in (("meeting", meetings, "meeting_at"), ("won", won, "won_at")):
        first = _first_after(u, frame, col, window)
        u[f"{label}_at"] = first
        u[label] = first.notna()
    if tasks is not None:
        touches = pd.concat(
            [
                meetings[["email", "meeting_at"]].rename(columns={"meeting_at": "touch_at"}),
                tasks[["email", "task_at"]].rename(columns={"task_at": "touch_at"}),
            ]
        )
        touches["touch_at"] = pd.to_datetime(touches["touch_at"], utc=True)
        u["first_touch_at"] = _first_after(u, touches, "touch_at", window)
    amounts = won.groupby("email")["amount"].sum() if len(won) else pd.Series(dtype=float)
    u["won_amount"] = u["email"].map(amounts).where(u["won"], 0.0).fillna(0.0)
    return u.reset_index(drop=True)


def _first_after(u: pd.DataFrame, frame: pd.DataFrame, col: str, window) -> pd.Series:
    if frame.empty:
        return pd.Series(pd.NaT, index=u.index, dtype="datetime64[us, UTC]")
    j = u[["email", "start"]].reset_index().merge(frame[["email", col]], on="email")
    t = pd.to_datetime(j[col], utc=True)
    j = j[(t >= j["start"]) & (t <= j["start"] + window)].assign(t=t)
    first = j.groupby("index")["t"].min()  # (reindexed: mapping an empty Series fails)
    return first.reindex(u.index).rename(None).astype("datetime64[us, UTC]")


def cohort_rates(per_user: pd.DataFrame, as_of: datetime, window_days: int) -> pd.DataFrame:
    """PQL→meeting and PQL→won rates per weekly cohort, non-PQL sign-ups alongside.

    A cohort is immature while its last member's window is still open at `as_of`.
    """
    g = per_user.groupby(["cohort_week", "is_pql"])
    table = g.agg(
        users=("email", "size"),
        meetings=("meeting", "sum"),
        won=("won", "sum"),
        won_amount=("won_amount", "sum"),
    ).reset_index()
    table["group"] = table.pop("is_pql").map({True: "PQL", False: "non-PQL"})
    table["meeting_rate"] = (table["meetings"] / table["users"]).round(4)
    table["won_rate"] = (table["won"] / table["users"]).round(4)
    closes = pd.to_datetime(table["cohort_week"]) + pd.Timedelta(days=7 + window_days)
    table["mature"] = closes.dt.tz_localize("UTC") <= pd.Timestamp(as_of)
    cols = [
        "cohort_week",
        "group",
        "users",
        "meetings",
        "meeting_rate",
        "won",
        "won_rate",
        "won_amount",
        "mature",
    ]
    return (
        table[cols]
        .sort_values(["cohort_week", "group"], ascending=[True, False])
        .reset_index(drop=True)
    )


def totals(per_user: pd.DataFrame) -> pd.DataFrame:
    """All cohorts together, PQL vs non-PQL, with the lift of PQLs over non-PQLs."""
    t = (
        per_user.groupby("is_pql")
        .agg(users=("email", "size"), meetings=("meeting", "sum"), won=("won", "sum"))
        .reset_index()
    )
    t["group"] = t.pop("is_pql").map({True: "PQL", False: "non-PQL"})
    t["meeting_rate"] = (t["meetings"] / t["users"]).round(4)
    t["won_rate"] = (t["won"] / t["users"]).round(4)
    return t[["group", "users", "meetings", "meeting_rate", "won", "won_rate"]]
