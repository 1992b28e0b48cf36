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
    *,
    until: datetime,
    tasks: pd.DataFrame | None = None,
    excluded_outcomes: tuple[str, ...] | list[str] = ("CANCELED", "NO_SHOW"),
) -> pd.DataFrame:
    """Per user of a report that ends at `until`: PQL or not, cohort, maturity, and the first
    meeting and win that count. These are the report's definitions (README "How the numbers
    are counted" says the same):

    - start: a PQL's qualification moment (`qualified_at`), anyone else's sign-up (first seen);
      a user who qualified at or after `until` is not a PQL in this report.
    - cohort: the Monday-to-Sunday (UTC) week of the start; users starting at or after `until`
      are not in the report at all.
    - window: `window_days` after the start. A user is mature once the window closed by
      `until` (`window_end` <= `until`); only mature users count in a rate.
    - meeting: the first meeting at or after the start and within the window whose outcome is
      not one of `excluded_outcomes` (cancelled, no-show); won: the first won deal likewise.
    - revenue (`won_amount`): each won deal once, for the one of its people whose window holds
      it and who started first (then by email), so a deal with two contacts counts once.
    - `converted_at`: the user's first win at any time before `until`, inside a window or not
      (for "conversions that were PQLs first").

    Outcomes are the store as of `until` (outcomes.as_of): nothing after the report's end.
    Given completed sales `tasks` (task_id, email, task_at), `first_touch_at` is the earliest
    meeting or task in the window (NaT if none).
    """
    end = pd.Timestamp(until)
    u = users[users["email"].notna()][["email", "first_seen", "qualified_at"]].copy()
    u["email"] = u["email"].str.lower()
    u = u.drop_duplicates("email", keep="last")
    qualified = pd.to_datetime(u["qualified_at"], utc=True)
    u["qualified_at"] = qualified.where(qualified < end)
    u["is_pql"] = u["qualified_at"].notna()
    u["start"] = pd.to_datetime(u["qualified_at"].where(u["is_pql"], u["first_seen"]), utc=True)
    u = u[u["start"] < end]
    u["cohort_week"] = u["start"].dt.tz_convert(None).dt.to_period("W-SUN").dt.start_time.dt.date
    window = pd.Timedelta(days=window_days)
    u["window_end"] = u["start"] + window
    u["mature"] = u["window_end"] <= end
    held = meetings
    if "outcome" in meetings.columns and len(meetings):
        held = meetings[~meetings["outcome"].fillna("").str.upper().isin(list(excluded_outcomes))]
    for label, frame, col in (("meeting", held, "meeting_at"), ("won", won, "won_at")):
        first = _first_after(u, frame, col, window)
        u[f"{label}_at"] = first
        u[label] = first.notna()
    if tasks is not None:
        touches = pd.concat(
            [
                held[["email", "meeting_at"]].rename(columns={"meeting_at": "touch_at"}),
                tasks[["email", "task_at"]].rename(columns={"task_at": "touch_at"}),
            ]
        )
        touches["touch_at"] = pd.to_datetime(touches["touch_at"], utc=True)
        u["first_touch_at"] = _first_after(u, touches, "touch_at", window)
    u["won_amount"] = _deal_revenue(u, won, window)
    wins = pd.to_datetime(won["won_at"], utc=True) if len(won) else pd.Series(dtype=object)
    first_win = wins[wins < end].groupby(won["email"].str.lower()).min() if len(won) else wins
    u["converted_at"] = u["email"].map(first_win).astype("datetime64[us, UTC]")
    return u.reset_index(drop=True)


def _deal_revenue(u: pd.DataFrame, won: pd.DataFrame, window) -> pd.Series:
    """Each won deal's amount once: for the person whose window holds it and who started
    first (then by email); per user, the sum of the deals they were given."""
    if won.empty:
        return pd.Series(0.0, index=u.index)
    j = won[["deal_id", "email", "won_at", "amount"]].assign(email=won["email"].str.lower())
    j = j.merge(u[["email", "start"]].reset_index(), on="email")
    t = pd.to_datetime(j["won_at"], utc=True)
    j = j[(t >= j["start"]) & (t <= j["start"] + window)]
    j = j.sort_values(["deal_id", "start", "email"]).drop_duplicates("deal_id", keep="first")
    per_user = j.groupby("index")["amount"].sum()
    return per_user.reindex(u.index).fillna(0.0).astype(float)


def _first_after(u: pd.DataFrame, frame: pd.DataFrame, col: str, window) -> pd.Series:
    """Each user's first `col` at or after their start and within the window (NaT if none)."""
    if frame.empty:
        return pd.Series(pd.NaT, index=u.index, dtype="datetime64[us, UTC]")
    rows = frame[["email", col]].assign(email=frame["email"].str.lower())
    j = u[["email", "start"]].reset_index().merge(rows, on="email")
    t = pd.to_datetime(j[col], utc=True)
    j = j[(t >= j["start"]) & (t <= j["start"] + window)].assign(t=t)
    first = j.groupby("index")["t"].min()  # (reindexed: mapping an empty Series fails)
    return first.reindex(u.index).rename(None).astype("datetime64[us, UTC]")
