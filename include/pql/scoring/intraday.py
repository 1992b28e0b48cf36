"""Intraday rescoring: only the users new events touched, as of the run, over the daily view.

A user's scores depend on their own events, the anonymous events of devices they were
identified on, and their account's firmographics; so the users a batch can change are those
whose events it holds and those ever identified on a device it holds (a device identified as
someone else now takes its anonymous events from its previous owner). Their rows, as of the
run, are exactly what a full rescore at that moment gives them (tests/pql/scoring/
test_intraday.py). Untouched users keep their rows: decay without events waits for the
daily full rescore.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

import duckdb
import pandas as pd

from pql.config import Config
from pql.lake import Lake, atomic_file
from pql.scoring import snapshots
from pql.scoring.features import DEVICE

log = logging.getLogger(__name__)

# What a run reads of the touched users' previous rows.
PREVIOUS = ["flag", "qualified_at"]


def touched_users(lake: Lake, files: Sequence[str]) -> list[str]:
    """The users whose scores the events in `files` can change."""
    if not files:
        return []
    con = duckdb.connect()
    try:
        new = f"read_parquet({list(files)!r}, hive_partitioning = false)"
        everything = (
            f"read_parquet('{lake.events_glob()}', hive_partitioning = false, union_by_name = true)"
        )
        own = f"SELECT DISTINCT user_key FROM {new} WHERE user_key NOT LIKE '{DEVICE}'"
        devices = f"SELECT DISTINCT device_id FROM {new} WHERE device_id IS NOT NULL"
        sql = own
        if con.execute(f"SELECT count(*) FROM ({devices})").fetchone()[0]:
            # Only then is the whole lake read: who else was identified on those devices.
            sql += f""" UNION SELECT DISTINCT e.user_key FROM {everything} e
                WHERE e.user_key NOT LIKE '{DEVICE}' AND e.device_id IN ({devices})"""
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows if r[0] is not None)


def rescore(
    cfg: Config, lake: Lake, files: Sequence[str], as_of: datetime, accounts: pd.DataFrame
) -> dict:
    """Rescore the users the new events in `files` touched as of `as_of` into the live rows
    (lake.live()/scores.parquet). Returns counts: touched, rescored, new_pqls, unflagged, and
    the view's users and PQLs. Accounts (PQA) are rolled up by the daily run, which is also
    the one that writes them to the CRM."""
    started = time.perf_counter()
    users = touched_users(lake, files)
    counts = {"touched": len(users), "rescored": 0, "new_pqls": 0, "unflagged": 0}
    if users:
        # Only the touched users' rows are read: the run's cost follows them, not everyone.
        previous = snapshots.view(lake, where=("user_key", users), columns=PREVIOUS)
        snaps = lake.partitions("scores")
        since = snapshots.snapshot_as_of(snaps[-1][0]) if snaps else None
        rows = snapshots.score_users(
            cfg, lake, as_of, accounts, previous, users=users, since=since
        )[snapshots.SNAPSHOT_COLUMNS]
        was = (
            previous.set_index("user_key")["flag"].astype(bool)
            if previous is not None
            else pd.Series(dtype=bool)
        )
        before = rows["user_key"].map(was).fillna(False).astype(bool)
        now = rows["flag"].astype(bool)
        counts.update(
            rescored=len(rows), new_pqls=int((now & ~before).sum()),
            unflagged=int((before & ~now).sum()),
        )  # fmt: skip
        _save_live(lake, rows, since)
    flags = snapshots.view(lake, columns=["flag"])
    counts["users"] = 0 if flags is None else len(flags)
    counts["pqls"] = 0 if flags is None else int(flags["flag"].sum())
    log.info(
        "intraday rescore as of %s: %s users touched, %s rescored, %s new PQLs, %s un-flagged "
        "(%s PQLs of %s users now; %.2f s)",
        as_of, counts["touched"], counts["rescored"], counts["new_pqls"], counts["unflagged"],
        counts["pqls"], counts["users"], time.perf_counter() - started,
    )  # fmt: skip
    return counts


def _save_live(lake: Lake, rows: pd.DataFrame, covered) -> None:
    """The live rows with `rows` in place of theirs; rows the latest snapshot covers (as of
    `covered` or before) are dropped."""
    old = snapshots.live_rows(lake)
    if old is not None:
        old = old[~old["user_key"].isin(rows["user_key"])]
        if covered is not None:
            old = old[old["as_of"] > covered]
        rows = pd.concat([old, rows], ignore_index=True)
    with atomic_file(lake.live() / "scores.parquet") as f:
        rows.to_parquet(f, index=False)
