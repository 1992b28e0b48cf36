"""Conversion metrics by cohort, model version and segment: rates, medians, revenue, first touch.

Input is attribution's per-user frame (outcomes.attribute) joined to the users' latest snapshot
(segments) and to the model version that qualified each PQL. Every rate of the report (the
headline, cohorts, segments, accounts) comes from `breakdown`: only users whose attribution
window has closed count, with k of n and a 95% interval; a group with none yet says when it
will have one, never a low rate.
"""

from __future__ import annotations

import glob
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from pql import rates

SIZE_BANDS = [(10, "1-10"), (50, "11-50"), (200, "51-200"), (1000, "201-1000")]
UNKNOWN = "unknown"
COLUMNS = [
    "dimension",
    "value",
    "group",
    "users",
    "mature_users",
    "still_open",
    "meetings",
    "meeting_rate",
    "meeting_low",
    "meeting_high",
    "won",
    "won_rate",
    "won_low",
    "won_high",
    "won_revenue",
    "median_days_to_meeting",
    "median_days_to_won",
    "median_hours_to_first_touch",
    "touched",
    "note",
]
# Values in their natural order (a band is not text): the rest sort alphabetically, unknown last.
ORDER = {"size_band": [band for _, band in SIZE_BANDS] + ["1001+"]}


def with_scores(per_user: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """per_user with each user's score from the week's snapshot (NaN where it has none)."""
    score = scores["score"] if "score" in scores.columns else float("nan")
    s = pd.DataFrame({"email": scores["email"].str.lower(), "score": score})
    return per_user.merge(s.drop_duplicates("email"), on="email", how="left")


def size_band(employees) -> str:
    """Company size band from an employee count ('unknown' when missing)."""
    if employees is None or pd.isna(employees):
        return UNKNOWN
    return next((band for top, band in SIZE_BANDS if employees <= top), "1001+")


def qualifying_versions(scores_glob: str) -> pd.DataFrame:
    """email → the model version of the first snapshot that held the user's qualification."""
    con = duckdb.connect()
    try:
        return con.sql(
            f"""
            SELECT lower(email) AS email, arg_min(model_version, as_of) AS qualified_by
            FROM read_parquet('{scores_glob}', union_by_name = true)
            WHERE email IS NOT NULL AND qualified_at IS NOT NULL AND as_of >= qualified_at
            GROUP BY 1
            """
        ).df()
    finally:
        con.close()


def segmented(
    per_user: pd.DataFrame, users: pd.DataFrame, versions: pd.DataFrame | None = None
) -> pd.DataFrame:
    """per_user with segments (size_band, industry, source, ...) and model_version attached.

    A PQL's model_version is the one that qualified it; non-PQLs have none.
    """
    u = users[users["email"].notna()].assign(email=lambda f: f["email"].str.lower())
    u = u.drop_duplicates("email", keep="last").set_index("email")
    out = per_user.assign(email=per_user["email"].str.lower())
    employees = out["email"].map(u["employees"]) if "employees" in u.columns else None
    out["size_band"] = UNKNOWN if employees is None else employees.map(size_band)
    for col in ("industry", "source", "country", "plan", "revenue_band"):
        values = out["email"].map(u[col]) if col in u.columns else None
        out[col] = UNKNOWN if values is None else values.fillna(UNKNOWN).astype(str)
    by = (
        versions.set_index("email")["qualified_by"]
        if versions is not None and len(versions)
        else pd.Series(dtype=object)
    )
    version = out["email"].map(by).astype(object)
    if "model_version" in u.columns:  # qualified before snapshots kept a version: the latest
        version = version.where(version.notna(), out["email"].map(u["model_version"]))
    out["model_version"] = version.where(out["is_pql"], None)
    return out


def breakdown(frame: pd.DataFrame, by: str, level: str = "PQL") -> pd.DataFrame:
    """One row per value of `by` and group (PQL / non-PQL, or PQA / non-PQA for accounts).

    `frame` is outcomes.attribute's (its `mature` says whose window closed). Rates and their
    95% intervals count mature users only; `still_open` users are counted beside; a group with
    none mature yet has no rate and a note saying when its first user matures. Medians are over
    the mature users with that outcome (`meetings`, `won`, `touched` say how many).
    """
    f = frame.copy()
    f["group"] = f["is_pql"].map({True: level, False: f"non-{level}"})
    f["days_to_meeting"] = (f["meeting_at"] - f["start"]).dt.total_seconds() / 86400
    f["days_to_won"] = (f["won_at"] - f["start"]).dt.total_seconds() / 86400
    touch = f["first_touch_at"] if "first_touch_at" in f.columns else f["meeting_at"]
    f["hours_to_touch"] = (touch - f["start"]).dt.total_seconds() / 3600
    if by == "model_version":
        f = f[f["is_pql"]]  # a version only qualifies PQLs
    rows = []
    for (value, group), g in f.groupby([f[by].fillna(UNKNOWN).astype(str), "group"]):
        m = g[g["mature"]]
        rows.append(
            {
                "dimension": by,
                "value": value,
                "group": group,
                "users": len(g),
                "mature_users": len(m),
                "still_open": len(g) - len(m),
                "meetings": int(m["meeting"].sum()),
                "won": int(m["won"].sum()),
                "won_revenue": float(g["won_amount"].sum()),
                "median_days_to_meeting": _median(m["days_to_meeting"]),
                "median_days_to_won": _median(m["days_to_won"]),
                "median_hours_to_first_touch": _median(m["hours_to_touch"]),
                "touched": int(m["hours_to_touch"].notna().sum()),
                "note": "" if len(m) else f"too early: first mature on {_first_mature(g)}",
            }
        )
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if not c.endswith(("_rate", "_low",
                                                                            "_high"))])  # fmt: skip
    for kind, k in (("meeting", "meetings"), ("won", "won")):
        table = table.join(rates.columns(kind, table[k], table["mature_users"]))
    table = table[COLUMNS]
    order = ORDER.get(by)
    key = table["value"].map(
        (lambda v: (order.index(v) if v in order else len(order), v)) if order
        else (lambda v: (v == UNKNOWN, v))
    )  # fmt: skip
    table = table.assign(_key=key, _pql=table["group"] == level)
    table = table.sort_values(["_key", "_pql"], ascending=[True, False])
    return table.drop(columns=["_key", "_pql"]).reset_index(drop=True)


def _median(values: pd.Series) -> float:
    """The median, unrounded (the page rounds once); NaN (an empty cell) when there is none."""
    v = values.dropna()
    return float(v.median()) if len(v) else float("nan")


def _first_mature(g: pd.DataFrame) -> str:
    return f"{g['window_end'].min():%Y-%m-%d}"


def all_breakdowns(
    frame: pd.DataFrame, dimensions: list[str], accounts: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Overall, per weekly cohort, per qualifying model version and per segment, stacked;
    with `accounts` (account_attribution), PQA vs non-PQA accounts as dimension 'accounts'."""
    f = frame.assign(all="all", cohort_week=frame["cohort_week"].astype(str))
    parts = [breakdown(f, d) for d in ["all", "cohort_week", *dimensions]]
    if accounts is not None and len(accounts):
        parts.append(breakdown(accounts.assign(accounts="all"), "accounts", "PQA"))
    return pd.concat(parts, ignore_index=True)


def scores_glob(lake_scores: Path) -> str:
    """Every daily snapshot under the lake's scores folder."""
    return str(lake_scores / "date=*" / "scores.parquet")


def qualifying_accounts(accounts_glob: str) -> pd.DataFrame:
    """account_key → the first snapshot day on which the account was product-qualified."""
    if not glob.glob(accounts_glob):
        return pd.DataFrame(columns=["account_key", "qualified_on"])
    con = duckdb.connect()
    try:
        return con.sql(
            f"""
            SELECT account_key, min(CAST(regexp_extract(filename, 'date=([0-9-]+)', 1) AS DATE))
                       AS qualified_on
            FROM read_parquet('{accounts_glob}', filename = true, union_by_name = true)
            WHERE qualified AND account_key IS NOT NULL
            GROUP BY 1
            """
        ).df()
    finally:
        con.close()


def account_attribution(
    users: pd.DataFrame,
    meetings: pd.DataFrame,
    won: pd.DataFrame,
    pqa: pd.DataFrame,
    window_days: int,
    *,
    until: datetime,
    excluded_outcomes: tuple[str, ...] | list[str] = ("CANCELED", "NO_SHOW"),
) -> pd.DataFrame:
    """Attribution at account level: an account starts when it first qualified (PQA; the end
    of that day) or when its first user signed up, and converts when any of its users does."""
    from pql.report.outcomes import attribute

    u = users[users["account_key"].notna() & users["email"].notna()]
    account_of = dict(zip(u["email"].str.lower(), u["account_key"], strict=False))
    day = pd.to_datetime(pqa["qualified_on"]).dt.tz_localize("UTC")
    qualified = pd.DataFrame(
        {"account_key": pqa["account_key"], "qualified_at": day + pd.Timedelta(days=1)}
    )
    accounts = u.groupby("account_key")["first_seen"].min().reset_index()
    accounts = accounts.merge(qualified, on="account_key", how="left")
    as_users = accounts.rename(columns={"account_key": "email"})

    def by_account(frame: pd.DataFrame) -> pd.DataFrame:
        mapped = frame.assign(email=frame["email"].str.lower().map(account_of))
        return mapped[mapped["email"].notna()]

    return attribute(as_users, by_account(meetings), by_account(won), window_days, until=until,
                     excluded_outcomes=excluded_outcomes)  # fmt: skip
