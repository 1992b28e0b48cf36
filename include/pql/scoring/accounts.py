"""Product-qualified accounts (PQA): users rolled up to their account, qualified by a rule."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql.config import Accounts

COLUMNS = [
    "account_key",
    "users",
    "active_users",
    "qualified_users",
    "qualified_share",
    "best_score",
    "total_score",
    "employees",
    "industry",
    "qualified",
    "reasons",
]


def rollup(scored: pd.DataFrame, rule: Accounts, active_days: int) -> pd.DataFrame:
    """One row per account: active and qualified users, best and summed scores, fit, PQA flag.

    A user is active when seen within `active_days`; the share is qualified active users over
    active users, and only applies from `rule.min_active_users` active users.
    """
    users = scored[scored["account_key"].notna()].copy()
    if users.empty:
        return pd.DataFrame(columns=COLUMNS)
    users["active"] = pd.to_numeric(users["days_since_last_seen"]) <= active_days
    users["qualified_active"] = users["flag"].astype(bool) & users["active"]
    for col in ("employees", "industry"):
        if col not in users:
            users[col] = None
    g = users.groupby("account_key", sort=True)
    out = pd.DataFrame(
        {
            "users": g.size(),
            "active_users": g["active"].sum(),
            "qualified_users": g["flag"].sum(),
            "qualified_active": g["qualified_active"].sum(),
            "best_score": g["score"].max(),
            "total_score": g["score"].sum(),
            "employees": g["employees"].first(),
            "industry": g["industry"].first(),
        }
    )
    active = out["active_users"].to_numpy()
    share = np.where(active > 0, out["qualified_active"] / np.maximum(active, 1), 0.0)
    out["qualified_share"] = share.round(3)
    tests = []
    if rule.min_qualified_users is not None:
        tests.append(out["qualified_users"].to_numpy() >= rule.min_qualified_users)
    if rule.min_qualified_share is not None:
        tests.append((active >= rule.min_active_users) & (share >= rule.min_qualified_share))
    hits = np.vstack(tests)
    out["qualified"] = hits.all(axis=0) if rule.match == "all" else hits.any(axis=0)
    out["reasons"] = [
        f"{q} of {a} active users qualified; {n} qualified in all; best score {b}"
        for q, a, n, b in zip(
            out["qualified_active"], active, out["qualified_users"], out["best_score"], strict=True
        )
    ]
    return out.reset_index()[COLUMNS]
