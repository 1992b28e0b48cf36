"""Past outcomes as labels: each email's first meeting and first win, from the weekly pulls."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from pql.lake import Lake

COLUMNS = ["email", "meeting_at", "won_at"]


def first_outcomes(lake: Lake) -> pd.DataFrame:
    """One row per email with its first meeting and first won deal (NaT when none)."""
    frames = {"meeting_at": [], "won_at": []}
    for _, part in lake.partitions("outcomes"):
        for name, col in (("meetings.parquet", "meeting_at"), ("won_deals.parquet", "won_at")):
            if (part / name).exists():
                frames[col].append(pd.read_parquet(part / name, columns=["email", col]))
    out = None
    for col, parts in frames.items():
        df = pd.concat(parts) if parts else pd.DataFrame({"email": [], col: []})
        df[col] = pd.to_datetime(df[col], utc=True)
        df["email"] = df["email"].astype("string").str.lower()
        first = df.groupby("email")[col].min()
        out = first.to_frame() if out is None else out.join(first, how="outer")
    return out.reset_index()[COLUMNS] if len(out) else pd.DataFrame(columns=COLUMNS)


def known_until(lake: Lake) -> pd.Timestamp | None:
    """Up to when outcomes are known: the end of the newest weekly pull (None if none)."""
    weeks = lake.partitions("outcomes")
    return pd.Timestamp(weeks[-1][0] + timedelta(days=7), tz="UTC") if weeks else None


def label(
    users: pd.DataFrame, outcomes: pd.DataFrame, moment: datetime, target: str, horizon_days: int
) -> pd.DataFrame:
    """Users still open at `moment` with label = converted (target) within the horizon after it.

    Users without an email cannot be matched to CRM outcomes and users who converted before the
    moment are no longer leads: both are left out.
    """
    col = f"{target}_at"
    t = pd.Timestamp(moment)
    u = users[users["email"].notna()].merge(
        outcomes[["email", col]], on="email", how="left", validate="many_to_one"
    )
    u = u[~(u[col] < t)]
    u["label"] = (u[col] >= t) & (u[col] < t + timedelta(days=horizon_days))
    u["moment"] = t
    return u.drop(columns=[col]).reset_index(drop=True)
