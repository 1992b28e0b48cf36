"""Soak: 30 simulated days of scores synced to HubSpot and to Salesforce while the sandbox
misbehaves (429s, 5xx at random moments, latency, per-record errors, lock errors, writes it
answers as saved and then loses), reps edit PQL fields by hand, convert Leads into Contacts
(Salesforce) and merge contacts (HubSpot) between runs.

After the last day and one clean run, each CRM holds exactly the computed values for every
user (read from the emulator's own store), no user has two records, records the CRM refuses
for good are reported as failed in every run (never dropped silently), and the ledger agrees
with the CRM.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager

import pandas as pd
import pytest
from simple_salesforce.exceptions import SalesforceError

from pql.config import HubSpotTarget, SalesforceTarget
from pql.crm import hubspot as crm_hubspot
from pql.crm import salesforce as crm_salesforce
from pql.crm.ledger import SyncError, load_ledger, merged_away
from pql.lake import Lake
from sandbox.hubspot import HubSpotStore
from sandbox.salesforce import SalesforceStore, convert_lead
from tests.conftest import salesforce_login
from tests.resilience.helpers import (
    HUBSPOT,
    SALESFORCE,
    ScoreWorld,
    expected,
    hubspot_contacts,
    mismatches,
    salesforce_people,
)

DAYS = 30
ATTEMPTS = 3  # the DAG's task: retries=2
BAD_EMAILS = ("not-an-email", "two@@acme.io")  # refused by both CRMs, every time


def _valid(email: str) -> bool:
    return email not in BAD_EMAILS


@contextmanager
def fault_at(state, prefix: str, target: str, status: int | None, after: int):
    """Queue a fault once the sandbox has served `after` more requests whose counter starts with
    `prefix`: the fault lands in the middle of a run, not on its first call (None: no fault)."""
    if status is None:
        yield
        return

    def served() -> int:
        return sum(v for k, v in list(state.counters.items()) if k.startswith(prefix))

    start, stop = served(), threading.Event()

    def watch():
        while not stop.is_set():
            if served() - start >= after:
                state.queue_fault(target, status)
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _attempts(run, clear_errors: tuple[type[BaseException], ...]) -> tuple[dict | None, list]:
    """Run the day's sync as the DAG's task would (retried); returns its counts and errors."""
    errors = []
    for _ in range(ATTEMPTS):
        try:
            return run(), errors
        except clear_errors as e:  # anything else is a crash: the test fails
            errors.append(e)
    return None, errors


def _check_end_state(held, counts, want, ledger, run_dirs, failed_per_run):
    assert not mismatches(held, want), list(mismatches(held, want).items())[:5]
    assert set(held) == set(want), "records the pipeline did not compute were created"
    assert max(counts.values()) == 1, [e for e, n in counts.items() if n > 1]
    # The ledger says what the CRM holds (so the next unchanged run writes nothing).
    assert set(ledger["email"]) == set(want)
    # Refused records are reported in every run and never enter the ledger.
    assert run_dirs and all(set(BAD_EMAILS) <= failed for failed in failed_per_run)


def _edit_by_hand(rng, written: list[str], edit) -> int:
    """A rep changes (or clears) PQL values of a few records, and a field the sync never writes."""
    n = 0
    if rng.random() < 0.5 and written:
        for email in rng.sample(written, min(len(written), rng.randint(1, 3))):
            choice = rng.random()
            if choice < 0.4:
                values = {"score": rng.randint(0, 100)}
            elif choice < 0.6:
                values = {"score": None}  # cleared
            elif choice < 0.8:
                values = {"flag": rng.random() < 0.5, "reasons": "rep: not a fit"}
            else:
                values = {"model_version": "hand-typed"}
            edit(email, values)
            n += 1
    return n


def _runs(lake: Lake, crm: str) -> list[pd.DataFrame]:
    return [pd.read_parquet(p / "results.parquet") for p in sorted(lake.sync(crm).glob("run=*"))]


def test_thirty_days_of_hubspot_under_faults(sandbox, tmp_path):
    rng = random.Random(7)
    world = ScoreWorld(
        seed=7,
        users=110,
        signups_per_day=3,
        change_share=0.1,
        version_change_day=20,
        bad_emails=BAD_EMAILS,
    )
    lake, target = Lake(tmp_path / "lake"), HubSpotTarget(kind="hubspot")
    hs = crm_hubspot.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)
    sandbox.settings["hubspot_latency_ms"] = 10
    store = HubSpotStore(sandbox)

    def edit(email, values):
        text = {bool: lambda v: str(v).lower(), type(None): lambda v: ""}
        props = {HUBSPOT[k]: text.get(type(v), str)(v) for k, v in values.items()}
        store.upsert("contacts", [{"email": email, "firstname": "Edited", **props}])

    away: set[str] = set()

    def merge(written: list[str]) -> None:
        """Sales merges two people's contacts now and then; either may be the primary."""
        ids = {r["properties"]["email"]: r["id"] for r in store.list("contacts")}
        pair = [e for e in written if e in ids]
        if rng.random() < 0.3 and len(pair) >= 2:
            primary, other = rng.sample(pair, 2)
            store.merge("contacts", ids[primary], ids[other])
            away.add(other)

    clear = (SyncError, *_hubspot_errors())
    edits = faults = failed_days = 0
    for _ in range(DAYS):
        scores = world.next_day()
        ledger = load_ledger(lake)
        written = sorted(set(ledger["email"]) - away) if ledger is not None else []
        edits += _edit_by_hand(rng, written, edit)
        merge(written)
        if rng.random() < 0.3:
            sandbox.queue_fault("hubspot_lost_write", 200)
        if rng.random() < 0.4:
            sandbox.queue_fault("hubspot_record_error", 207, rng.randint(1, 3))
        status = rng.choice([429, 500, 502, 503, 504, None])
        faults += status is not None
        with fault_at(sandbox, "hubspot ", "hubspot", status, rng.randint(0, 6)):
            result, errors = _attempts(
                lambda s=scores: crm_hubspot.sync(hs, lake, target, s), clear
            )
        failed_days += result is None
    # Whatever a fault left (a lost write, a refused record) goes in the next clean run.
    for target_name in ("hubspot_lost_write", "hubspot_record_error", "hubspot"):
        while sandbox.take_fault(target_name) is not None:
            pass
    sandbox.settings["hubspot_latency_ms"] = 0
    last = crm_hubspot.sync(hs, lake, target, scores)
    assert last["failed"] == len(BAD_EMAILS)

    # A merged-away person's email lives on in another person's record: not theirs to write.
    want = expected(scores, lambda e: _valid(e) and e not in away)
    held, counts = hubspot_contacts(sandbox)
    runs = _runs(lake, "hubspot")
    failed = [set(r.loc[r["status"] == "failed", "email"]) for r in runs]
    ledger = load_ledger(lake)
    assert set(merged_away(ledger)) == away and len(away) >= 3
    _check_end_state(held, counts, want, ledger[~ledger["email"].isin(away)], runs, failed)
    assert edits >= 5 and faults >= 10 and failed_days < 3
    again = crm_hubspot.sync(hs, lake, target, scores)
    assert (again["written"], again["unchanged"]) == (0, len(want))


def test_thirty_days_of_salesforce_under_faults(sandbox, tmp_path):
    rng = random.Random(11)
    world = ScoreWorld(
        seed=11,
        users=110,
        signups_per_day=3,
        change_share=0.1,
        version_change_day=20,
        bad_emails=BAD_EMAILS,
    )
    lake = Lake(tmp_path / "lake")
    target = SalesforceTarget(kind="salesforce", bulk_threshold=150)  # the rollout goes via Bulk
    login = salesforce_login(sandbox)
    sandbox.settings.update(salesforce_latency_ms=10, salesforce_lock_rate=0.01)
    store = SalesforceStore(sandbox)

    def edit(email, values):
        # The record sales sees: the Contact once the Lead was converted.
        found = (
            (o, r) for o in ("Contact", "Lead")
            for r in store.query(f"SELECT Id FROM {o} WHERE Email = '{email}'")
        )  # fmt: skip
        obj, rec = next(found)
        store.update(
            obj,
            rec["Id"],
            {"FirstName": "Edited", **{SALESFORCE[k]: v for k, v in values.items()}},
        )

    def convert(emails: list[str]) -> int:
        """Sales converts a few open Leads (Account, Contact, Opportunity), as reps do."""
        open_leads = store.query("SELECT Id, Email FROM Lead WHERE IsConverted = false")
        picks = [r for r in open_leads if r["Email"] in set(emails)]
        picks = rng.sample(picks, min(len(picks), rng.randint(0, 3)))
        sf = login()
        for r in picks:
            for _ in range(5):  # a rep converts again when Salesforce says the row is locked
                done = convert_lead(sf, r["Id"], create_opportunity=rng.random() < 0.5)
                codes = {e.get("statusCode") for e in done["errors"]}
                if done["success"] or codes != {"UNABLE_TO_LOCK_ROW"}:
                    break
            assert done["success"], done
        return len(picks)

    def run(scores):
        sf = login()
        return crm_salesforce.sync(sf, lake, target, scores, login=login)

    edits = failed_days = conversions = 0
    for day in range(DAYS):
        scores = world.next_day()
        ledger = load_ledger(lake, crm="salesforce")
        written = sorted(ledger["email"]) if ledger is not None else []
        edits += _edit_by_hand(rng, written, edit)
        conversions += convert(written)
        if rng.random() < 0.3:
            sandbox.queue_fault("salesforce_lost_write", 200)
        if rng.random() < 0.4:
            sandbox.queue_fault("salesforce_lock", 400, rng.randint(1, 5))
        status = rng.choice([500, 502, 503, 403, None, None])
        with fault_at(sandbox, "salesforce.", "salesforce", status, rng.randint(0, 8)):
            result, errors = _attempts(lambda s=scores: run(s), (SyncError, SalesforceError))
        failed_days += result is None
        if day == 0:
            assert result is not None  # the first day creates everyone
    for target_name in ("salesforce_lost_write", "salesforce_lock", "salesforce"):
        while sandbox.take_fault(target_name) is not None:
            pass
    sandbox.settings.update(salesforce_latency_ms=0, salesforce_lock_rate=0.0)
    last = run(scores)
    assert last["failed"] == len(BAD_EMAILS)

    want = expected(scores, _valid)
    held, counts = salesforce_people(sandbox)
    runs = _runs(lake, "salesforce")
    failed = [set(r.loc[r["status"] == "failed", "email"]) for r in runs]
    _check_end_state(held, counts, want, load_ledger(lake, crm="salesforce"), runs, failed)
    assert edits >= 5 and failed_days < 5 and conversions >= 10
    converted = store.query("SELECT Email FROM Lead WHERE IsConverted = true")
    assert len(converted) == conversions and {r["Email"] for r in converted} <= set(want)
    again = run(scores)
    assert (again["written"], again["unchanged"]) == (0, len(want))


def _hubspot_errors() -> tuple[type[BaseException], ...]:
    """Every hubspot package's ApiException (the SDK has one per API)."""
    from hubspot.crm.contacts import ApiException as Contacts
    from hubspot.crm.objects import ApiException as Objects
    from hubspot.crm.properties import ApiException as Properties

    return Contacts, Objects, Properties


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_lost_batch_is_found_whole_by_the_sampled_read_back(sandbox, tmp_path):
    """The CRM answers one batch of 100 as written and keeps none of it: a read-back sample of
    50 sees only some of those records, so finding one makes the sync read back the rest."""
    lake, target = Lake(tmp_path), HubSpotTarget(kind="hubspot", max_failed_share=1)
    hs = crm_hubspot.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)
    scores = ScoreWorld(seed=3, users=250).next_day()
    sandbox.queue_fault("hubspot_lost_write", 200)
    first = crm_hubspot.sync(hs, lake, target, scores)
    held, _ = hubspot_contacts(sandbox)
    lost = set(expected(scores)) - set(held)
    assert len(lost) in (50, 100) and first["failed"] == len(lost)
    assert not lost & set(load_ledger(lake)["email"])
    assert crm_hubspot.sync(hs, lake, target, scores)["written"] == len(lost)
    assert not mismatches(hubspot_contacts(sandbox)[0], expected(scores))


def test_a_lost_collection_is_found_whole_by_the_sampled_read_back(sandbox, tmp_path):
    lake = Lake(tmp_path)
    target = SalesforceTarget(kind="salesforce", max_failed_share=1)
    login = salesforce_login(sandbox)
    world = ScoreWorld(seed=4, users=450, change_share=1.0)
    crm_salesforce.sync(login(), lake, target, world.next_day())
    scores = world.next_day()  # (almost) every score changes: three Collections updates
    sandbox.queue_fault("salesforce_lost_write", 200)
    result = crm_salesforce.sync(login(), lake, target, scores)
    wrong = mismatches(salesforce_people(sandbox)[0], expected(scores))
    assert len(wrong) >= 50 and result["failed"] == len(wrong)
    assert crm_salesforce.sync(login(), lake, target, scores)["written"] == len(wrong)
    assert not mismatches(salesforce_people(sandbox)[0], expected(scores))
