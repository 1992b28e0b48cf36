"""The one sync engine: the same policy for every CRM; the adapter makes the CRM's calls.

A run, whichever the CRM:
1. **Plan.** Desired values per person against the ledger: only what changed is written (with
   `min_score_change`, only what flips the flag or moves the score that much; the rest waits
   for a full run). Meanwhile the adapter asks what the CRM changed since the last run
   (`People.recent`), around the spans of our own last writes, and checks its fields exist when
   no passed check is remembered (a day, the same fields).
2. **Records that moved.** A person whose record changed since the last run (a Lead converted,
   a Contact created, two contacts merged) gets the full values written where they live now;
   an email a merge made secondary is never written again.
3. **Hand edits.** Values edited in the CRM since we wrote them: `overwrite` writes the computed
   values back, `keep` leaves those records out. A record whose modification time is the one
   our write left holds no edit.
4. **Write** (`People.write`) to the record the ledger names (looked up when it names none),
   per-record results kept in the run folder. A write refused for a field the CRM does not
   have checks the fields again (saying what to create) and is sent once more.
5. **Verify.** A sample is read back (all of it when the sample finds a lost write); a record
   the CRM does not hold as sent is failed, stays out of the ledger and is sent again.
6. **Ledger.** Only what the CRM holds is recorded, with the record holding it and the CRM's
   time of the write, in one step.
7. **Failure share.** More rejected records than `max_failed_share` fails the run.

A run with nothing to write makes only `recent`'s calls (HubSpot: a search per span around our
writes; Salesforce: a query per object).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pandas as pd

from pql.crm import SyncError
from pql.crm.ledger import (
    MERGED,
    MODIFIED,
    Since,
    apply_manual_edits,
    column,
    diff_sample,
    differing,
    last_values,
    load_ledger,
    material,
    merged_ledger,
    next_ours,
    plan,
    records,
    relocated,
    same_value,
    save_ledger,
    to_verify,
    unverified,
    verify_rest,
    watermark,
)
from pql.frames import among
from pql.lake import Lake, atomic_dir, atomic_file

log = logging.getLogger(__name__)

PROVISION_EVERY = timedelta(days=1)  # a passed field check is trusted this long


class FieldsMissing(SyncError):
    """The CRM refused a write for a field it does not have (removed or renamed since the
    fields were checked)."""


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
    # email → the CRM's modification time of the record `values` were read from
    modified: dict[str, str] = field(default_factory=dict)
    # email → where people found while looking for moves live now (written there)
    located: dict[str, Located] = field(default_factory=dict)


@dataclass(frozen=True)
class Located:
    """The record an email resolves to now ("Contact/003…", "contacts/123"), its values (empty
    when not read) and its parent (the Account a Contact's write locks), where known."""

    record: str
    values: dict
    parent: str | None = None


class People(Protocol):
    """What the engine asks of a CRM adapter about people records."""

    kind: str
    label: str
    target: object  # its settings (pql.crm.targets)
    # True: a write needs each record found first (Salesforce); False: upserts by email
    writes_by_record: bool

    def provision(self) -> None:
        """Check (or create) the fields the sync writes; SyncError naming what is missing."""

    def recent(self, since: Since | None, scores: pd.DataFrame, ledger: pd.DataFrame) -> Recent:
        """What changed in the CRM in `since`'s gaps (edits, moves, merges)."""

    def locate(self, emails: list[str], scores: pd.DataFrame) -> dict[str, Located]:
        """The records these emails resolve to now, with their current values."""

    def write(
        self, todo: pd.DataFrame, located: dict[str, Located], scores: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """Write `todo` (a person not located is created, create_missing being on); returns the
        rows sent, one result per record (email, status, record, message, transient, the CRM's
        own columns, and where known `modified_at`, the CRM's time of the write, and
        `modified_from`/`modified_to`, bounds on it) and counts of its own (not_in_crm: people
        it could not write). FieldsMissing when the CRM does not have a field written."""

    def read(self, where: dict[str, str]) -> dict[str, dict]:
        """email → the values held now by the records in `where` (email → record), with the
        record's modification time under MODIFIED where the CRM says it."""


def run(
    crm: People,
    lake: Lake,
    scores: pd.DataFrame,
    *,
    dry_run: bool = False,
    min_score_change: float | None = None,
) -> dict:
    """Write the people whose values changed to the CRM; record every result; update the
    ledger. An unchanged re-run makes no write calls; failed records are sent again next run.
    With `min_score_change`, a change that neither flips the flag nor moves the score that much
    is deferred (counted, written by the next run without it)."""
    target, kind = crm.target, crm.kind
    started = datetime.now(UTC)
    ledger = load_ledger(lake, crm=kind)
    since = watermark(lake, crm=kind) if ledger is not None else None
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The provisioning check (when due), then the search for what changed in the CRM, run
        # while the diff is computed: the first write goes out as soon as the diff is done.
        seen = None if dry_run else pool.submit(_changes, crm, lake, since, scores, ledger)
        desired, todo, counts = plan(scores, ledger, target)
        later = todo.head(0)
        if min_score_change is not None:
            todo, later = material(todo, ledger, target, min_score_change)
        if dry_run:
            return {**counts, **({"deferred": len(later)} if min_score_change is not None else {}),
                    "would_write": len(todo), "sample": diff_sample(todo, ledger)}  # fmt: skip
        recent = _own_writes(seen.result(), ledger)
    todo, moved, away = _moves(todo, desired, ledger, recent.holders, counts)
    if ledger is not None and target.on_manual_edit == "overwrite":
        current = {e: v for e, v in recent.values.items() if e not in moved}
        todo, found = apply_manual_edits(todo, desired, ledger, current, "overwrite")
        counts.update(found)
    if min_score_change is not None:  # those a move or an edit brought back are written now
        waiting = len(later) - int(among(later["email"], todo["email"]).sum())
        counts["deferred"] = waiting
        if waiting:
            log.info("%s sync: %s of %s changed records deferred (flag unchanged, score moved less "
                     "than %s): the next full run writes them", crm.label, waiting,
                     counts["candidates"] - counts["unchanged"], min_score_change)  # fmt: skip
    emails = set(todo["email"])
    # Of the people about to be written: those the ledger holds (not moved), and their records.
    mine = ledger[among(ledger["email"], emails)] if ledger is not None else None
    known = set(mine["email"].tolist()) - moved if mine is not None else set()
    held = {e: r for e, r in records(mine).items() if e in known and not r.startswith(MERGED)}
    located = {e: f for e, f in recent.located.items() if e in emails}  # found by `recent`
    need = set()
    if crm.writes_by_record:  # where the ledger names the record, it is written there directly
        parents = column(mine, "parent", held)
        located |= {e: Located(r, {}, parents.get(e)) for e, r in held.items()}
        need = emails - set(located)
    if not target.create_missing:
        need |= emails - set(mine["email"].tolist() if mine is not None else ())
    if ledger is not None and target.on_manual_edit == "keep":
        # An edit made any time since we wrote a record survives: read the records about to
        # be written (by the record the ledger names, else found); a record new to a person
        # holds nobody's edit.
        need |= known - set(held) - set(located)
    located |= crm.locate(sorted(need), scores) if need else {}
    if ledger is not None and target.on_manual_edit == "keep":
        current = {e: _values(v) for e, v in (crm.read(held) if held else {}).items()}
        current |= {e: located[e].values for e in known - set(held) if e in located}
        todo, kept = apply_manual_edits(todo, desired, ledger, current, "keep")
        counts.update(kept)
    missing = pd.Series(False, index=todo.index)
    if not target.create_missing:  # of those looked up, the ones the CRM does not have
        missing = among(todo["email"], need) & ~among(todo["email"], located)
        todo = todo[~missing]
    todo, results, own = _write(crm, lake, todo, located, scores)
    if not target.create_missing or "not_in_crm" in own:
        own["not_in_crm"] = int(missing.sum()) + own.get("not_in_crm", 0)
    counts.update(own)
    ok = results[results["status"] == "written"]
    checked = to_verify(ok["email"], target.verify, target.verify_sample)
    where = {**recent.noted, **away, **dict(zip(ok["email"], ok["record"], strict=True))}
    columns = {"modified_at": _column(ok, "modified_at"), "parent": _column(ok, "parent")}
    read_at: dict[str, str] = {}  # modification times the read-back saw
    with ThreadPoolExecutor(max_workers=1) as pool:
        # The read-back waits for the rate window: the new ledger is built meanwhile.
        back = pool.submit(crm.read, {e: where[e] for e in checked}) if checked else None
        merged = merged_ledger(ledger, todo[among(todo["email"], ok["email"])], where=where,
                               columns=columns, flag=target.fields.flag,
                               qualified=target.fields.qualified_at)  # fmt: skip
        if back is not None:
            holds = back.result()
            results = unverified(results, todo, holds, checked)
            if rest := verify_rest(results, checked, target.verify):
                holds |= crm.read({e: where[e] for e in rest})
                results = unverified(results, todo, holds, rest)
            read_at = {e: str(v[MODIFIED]) for e, v in holds.items() if v.get(MODIFIED)}
    written = results[results["status"] == "written"]
    lost = set(ok["email"]) - set(written["email"])
    if lost or read_at:  # the CRM did not keep some writes: they stay out
        where = {e: r for e, r in where.items() if e not in lost}
        columns["modified_at"] = {**columns["modified_at"], **read_at}
        merged = merged_ledger(ledger, todo[among(todo["email"], written["email"])],
                               where=where, columns=columns, flag=target.fields.flag,
                               qualified=target.fields.qualified_at)  # fmt: skip
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = lake.sync(kind) / f"run={run_id}"
    with atomic_dir(run_dir) as tmp:
        results.to_parquet(tmp / "results.parquet", index=False)
    ours = next_ours(since, started, _span(ok), len(ok))
    save_ledger(lake, merged, crm=kind, run_started=started, ours=ours)
    failed = results[results["status"] == "failed"]
    counts.update(written=len(written), failed=len(failed), run=run_id)
    log.info("%(label)s sync: %(written)s of %(candidates)s written, %(unchanged)s unchanged, "
             "%(failed)s failed, %(skipped_no_email)s without an email; all counts: %(all)s",
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


def _changes(crm: People, lake: Lake, since: Since | None, scores, ledger) -> Recent:
    """The field check when due, then People.recent (none before a first run)."""
    if not _provisioned(lake, crm):
        crm.provision()
        _remember_provisioned(lake, crm)
    if ledger is None:
        return Recent()
    return _checked(crm, lake, lambda: crm.recent(since, scores, ledger))


def _write(crm: People, lake: Lake, todo, located, scores):
    return _checked(crm, lake, lambda: crm.write(todo, located, scores))


def _checked(crm: People, lake: Lake, call):
    """call(); when the CRM refuses it for a field it does not have, the fields are checked
    again (which says what to create, or creates it) and it is made once more."""
    try:
        return call()
    except FieldsMissing as e:
        _forget_provisioned(lake, crm)
        log.warning("%s refused a call for a field it does not have (%s): checking the fields "
                    "again", crm.label, e)  # fmt: skip
        crm.provision()
        _remember_provisioned(lake, crm)
        return call()


def _values(read: dict) -> dict:
    return {k: v for k, v in read.items() if k != MODIFIED}


def _column(results: pd.DataFrame, name: str) -> dict[str, str]:
    """email → the results' `name` where it has one."""
    if name not in results.columns:
        return {}
    rows = results[results[name].notna()]
    return dict(zip(rows["email"], rows[name].astype(str), strict=True))


def _span(ok: pd.DataFrame) -> tuple[datetime, datetime] | None:
    """The span of the CRM's clock holding every write in `ok`, or None where one is unknown."""
    if ok.empty or not {"modified_from", "modified_to"} <= set(ok.columns):
        return None
    lo, hi = (pd.to_datetime(ok[c], utc=True, format="ISO8601")
              for c in ("modified_from", "modified_to"))  # fmt: skip
    if lo.isna().any() or hi.isna().any():
        return None
    return lo.min().to_pydatetime(), hi.max().to_pydatetime()


def _own_writes(recent: Recent, ledger: pd.DataFrame | None) -> Recent:
    """`recent` less the values of records whose modification time is the one our write left
    (found again at a span's edge, or written by a run too small to search around) and that
    still hold what we wrote: a clock of whole seconds gives a rep's edit in the second of
    our write the same time, and the values tell it apart."""
    stamps = column(ledger, "modified_at", recent.modified)
    ours = {e for e, t in recent.modified.items() if e in stamps and same_value(stamps[e], t)}
    if ours:
        ours -= set(differing(recent.values, last_values(ledger, ours)))
    if not ours:
        return recent
    values = {e: v for e, v in recent.values.items() if e not in ours}
    return Recent(values=values, holders=recent.holders, noted=recent.noted,
                  modified=recent.modified, located=recent.located)  # fmt: skip


def _checked_fields(crm: People) -> dict:
    """What a field check covers, as settings: a change to them checks again."""
    return {"kind": crm.kind, **crm.target.model_dump(include={"fields", "property_group"})}


def _provisioned(lake: Lake, crm: People) -> bool:
    """A field check of these settings passed less than PROVISION_EVERY ago."""
    path = lake.sync(crm.kind) / "provisioned.json"
    try:
        done = json.loads(path.read_text())
        at = datetime.fromisoformat(done["checked_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    fresh = timedelta(0) <= datetime.now(UTC) - at < PROVISION_EVERY
    return fresh and done.get("checked") == _checked_fields(crm)


def _remember_provisioned(lake: Lake, crm: People) -> None:
    done = {"checked": _checked_fields(crm), "checked_at": datetime.now(UTC).isoformat()}
    with atomic_file(lake.sync(crm.kind) / "provisioned.json", "w") as f:
        json.dump(done, f)


def _forget_provisioned(lake: Lake, crm: People) -> None:
    (lake.sync(crm.kind) / "provisioned.json").unlink(missing_ok=True)


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
