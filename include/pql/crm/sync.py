"""The one sync engine: the same policy for every CRM; the adapter makes the CRM's calls.

A run, whichever the CRM:
1. **Plan.** Desired values per person against the ledger: only what changed is written.
   Meanwhile the adapter checks its fields exist and asks what the CRM changed since the last
   run (`People.recent`).
2. **Records that moved.** A person whose record changed since the last run (a Lead converted,
   a Contact created, two contacts merged) gets the full values written where they live now;
   an email a merge made secondary is never written again.
3. **Hand edits.** Values edited in the CRM since we wrote them: `overwrite` writes the computed
   values back, `keep` leaves those records out.
4. **Write** (`People.write`), per-record results kept in the run folder.
5. **Verify.** A sample is read back (all of it when the sample finds a lost write); a record
   the CRM does not hold as sent is failed, stays out of the ledger and is sent again.
6. **Ledger.** Only what the CRM holds is recorded, with the record holding it, in one step.
7. **Failure share.** More rejected records than `max_failed_share` fails the run.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import pandas as pd

from pql.crm import SyncError
from pql.crm.ledger import (
    MERGED,
    apply_manual_edits,
    diff_sample,
    edits_since,
    load_ledger,
    merged_ledger,
    plan,
    records,
    relocated,
    save_ledger,
    to_verify,
    unverified,
    verify_rest,
)
from pql.frames import among
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)


@dataclass
class Recent:
    """What the CRM changed since the last run, as far as the sync cares."""

    # email → the CRM's current values of records edited since (for the overwrite rule)
    values: dict[str, dict] = field(default_factory=dict)
    # email → the record holding the person now, where that may have changed; "merged:<record>"
    # for an email a merge made secondary on another person's record
    holders: dict[str, str] = field(default_factory=dict)
    # email → record to note in the ledger without writing (an old ledger's people, found once)
    noted: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Located:
    """The record an email resolves to now ("Contact/003…", "contacts/123") and its values."""

    record: str
    values: dict


class People(Protocol):
    """What the engine asks of a CRM adapter about people records."""

    kind: str
    label: str
    target: object  # its settings (pql.crm.targets)
    # True: a write needs each record found first (Salesforce); False: upserts by email
    writes_by_record: bool

    def provision(self) -> None:
        """Check (or create) the fields the sync writes; SyncError naming what is missing."""

    def recent(self, since: datetime | None, scores: pd.DataFrame, ledger: pd.DataFrame) -> Recent:
        """What changed in the CRM since `since` (edits, moves, merges)."""

    def locate(self, emails: list[str], scores: pd.DataFrame) -> dict[str, Located]:
        """The records these emails resolve to now, with their current values."""

    def write(
        self, todo: pd.DataFrame, located: dict[str, Located], scores: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """Write `todo` (a person not located is created, create_missing being on); returns the
        rows sent, one result per record (email, status, record, message, transient and the
        CRM's own columns) and counts of its own (not_in_crm: people it could not write)."""

    def read(self, where: dict[str, str]) -> dict[str, dict]:
        """email → the values held now by the records in `where` (email → record)."""


def run(crm: People, lake: Lake, scores: pd.DataFrame, *, dry_run: bool = False) -> dict:
    """Write the people whose values changed to the CRM; record every result; update the
    ledger. An unchanged re-run makes no write calls; failed records are sent again next run."""
    target, kind = crm.target, crm.kind
    started = datetime.now(UTC)
    ledger = load_ledger(lake, crm=kind)
    since = edits_since(lake, crm=kind) if ledger is not None else None
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The provisioning check, then the search for what changed in the CRM, run while the
        # diff is computed: the first write goes out as soon as the diff is done.
        ready = None if dry_run else pool.submit(crm.provision)
        seen = None if dry_run or ledger is None else pool.submit(crm.recent, since, scores, ledger)
        desired, todo, counts = plan(scores, ledger, target)
        if dry_run:
            return {**counts, "would_write": len(todo), "sample": diff_sample(todo, ledger)}
        ready.result()
        recent = seen.result() if seen else Recent()
    todo, moved, away = _moves(todo, desired, ledger, recent.holders, counts)
    if ledger is not None and target.on_manual_edit == "overwrite":
        current = {e: v for e, v in recent.values.items() if e not in moved}
        todo, found = apply_manual_edits(todo, desired, ledger, current, "overwrite")
        counts.update(found)
    known = set(ledger["email"]) - moved if ledger is not None else set()
    need = set(todo["email"]) if crm.writes_by_record else set()
    if ledger is not None and target.on_manual_edit == "keep":
        # An edit made any time since we wrote a record survives: read the records about to
        # be written; a record new to a person holds nobody's edit.
        need |= set(todo["email"]) & known
    if not target.create_missing:
        need |= set(todo["email"]) - set(ledger["email"] if ledger is not None else ())
    located = crm.locate(sorted(need), scores) if need else {}
    if ledger is not None and target.on_manual_edit == "keep":
        current = {e: located[e].values for e in todo["email"] if e in known and e in located}
        todo, found = apply_manual_edits(todo, desired, ledger, current, "keep")
        counts.update(found)
    missing = pd.Series(False, index=todo.index)
    if not target.create_missing:  # of those looked up, the ones the CRM does not have
        missing = among(todo["email"], need) & ~among(todo["email"], located)
        todo = todo[~missing]
    todo, results, own = crm.write(todo, located, scores)
    if not target.create_missing or "not_in_crm" in own:
        own["not_in_crm"] = int(missing.sum()) + own.get("not_in_crm", 0)
    counts.update(own)
    ok = results[results["status"] == "written"]
    checked = to_verify(ok["email"], target.verify, target.verify_sample)
    where = {**recent.noted, **away, **dict(zip(ok["email"], ok["record"], strict=True))}
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The read-back waits for the rate window: the new ledger is built meanwhile.
        held = pool.submit(crm.read, {e: where[e] for e in checked}) if checked else None
        merged = merged_ledger(ledger, todo[among(todo["email"], ok["email"])], where=where)
        if held is not None:
            results = unverified(results, todo, held.result(), checked)
            if rest := verify_rest(results, checked, target.verify):
                results = unverified(results, todo, crm.read({e: where[e] for e in rest}), rest)
    written = results[results["status"] == "written"]
    if len(written) < len(ok):  # the CRM did not keep some writes: they stay out
        lost = set(ok["email"]) - set(written["email"])
        where = {e: r for e, r in where.items() if e not in lost}
        merged = merged_ledger(ledger, todo[among(todo["email"], written["email"])], where=where)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = lake.sync(kind) / f"run={run_id}"
    with atomic_dir(run_dir) as tmp:
        results.to_parquet(tmp / "results.parquet", index=False)
    save_ledger(lake, merged, crm=kind, run_started=started)
    failed = results[results["status"] == "failed"]
    counts.update(written=len(written), failed=len(failed), run=run_id)
    log.info("%(label)s sync: %(written)s written, %(unchanged)s unchanged, %(failed)s failed, "
             "%(skipped_no_email)s without an email; all counts: %(all)s",
             {**counts, "label": crm.label, "all": counts})  # fmt: skip
    # Measured against every record the run is responsible for, so one permanently bad
    # record retried on a quiet day does not fail the run on its own.
    if len(failed) and len(failed) / len(desired) > target.max_failed_share:
        sample = "; ".join(
            f"{r['email']}: " + " ".join(str(x) for x in (r.get("status_code"), r["message"]) if x)
            for r in failed.head(5).to_dict("records")
        )
        raise SyncError(
            f"{len(failed)} of {len(desired)} records were rejected by {crm.label} (more than "
            f"max_failed_share {target.max_failed_share:.0%}); e.g. {sample}. "
            f"All results: {run_dir}"
        )
    return counts


def _moves(
    todo: pd.DataFrame,
    desired: pd.DataFrame,
    ledger: pd.DataFrame | None,
    holders: dict[str, str],
    counts: dict,
) -> tuple[pd.DataFrame, set[str], dict[str, str]]:
    """People whose record is not the one the ledger says: their full values are written where
    they live now; an email a merge made secondary is never written again (an upsert by it
    would create the person anew, undoing the merge). Returns the new todo, the moved emails
    and the merged-away records to note in the ledger."""
    if ledger is None or not holders:
        return todo, set(), {}
    was = records(ledger)
    known = set(ledger["email"])
    away = {e: r for e, r in holders.items()
            if r.startswith(MERGED) and e in known and was.get(e) != r}  # fmt: skip
    primary = {e: r for e, r in holders.items() if e not in away and not r.startswith(MERGED)}
    todo, moved = relocated(todo, desired, ledger, primary)
    if away:
        log.warning("%s contacts were merged into other people's records: no longer written",
                    len(away))  # fmt: skip
        todo = todo[~among(todo["email"], away)]
        counts["merged_away"] = counts.get("merged_away", 0) + len(away)
    if moved:
        counts["moved"] = len(moved)
    return todo, moved, away
