"""The CRM contract: the same cases against every adapter, each on its emulator.

The adapter is built the way the pipeline builds it (pql.crm.connect from the connection the
sandbox publishes) and driven only through the pql.crm.Crm protocol. What differs per CRM is how
a test arranges and inspects the CRM's own records: the `World` classes below. A new CRM joins
by adding its World to WORLDS (and its emulator to the sandbox).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pql import connections, crm
from pql.config import HubSpotTarget, Routing, SalesforceTarget
from pql.lake import Lake
from pql.report import outcomes
from sandbox.hubspot import HubSpotStore
from sandbox.salesforce import SalesforceStore
from sandbox.salesforce_store import DEFAULT_CUSTOM_FIELDS
from sandbox.server import connection_env
from tests.conftest import scores_frame

NOW = datetime(2026, 11, 2, 9, tzinfo=UTC)


class HubSpotWorld:
    target = HubSpotTarget(kind="hubspot", verify="all")
    creates_fields = True  # the sync creates its missing properties

    def __init__(self, sandbox):
        self.sandbox, self.store = sandbox, HubSpotStore(sandbox)

    def calls(self) -> int:
        """API requests the CRM has answered so far."""
        c = self.sandbox.counters
        return sum(v for k, v in c.items() if k.startswith("hubspot ") and k != "hubspot 429")

    def later(self) -> None:
        """Nothing to wait for: HubSpot gives each write its own time to the millisecond."""

    def drop_field(self, name: str) -> None:
        """An admin deletes the property the sync writes `name` to (arranged in the store)."""
        field = getattr(self.target.fields, name)
        with self.sandbox.db() as conn:
            conn.execute("DELETE FROM hubspot_properties WHERE object_type = 'contacts' "
                         "AND name = ?", (field,))  # fmt: skip

    def person(self, email: str) -> None:
        self.store.upsert("contacts", [{"email": email, "firstname": "Pat"}])

    def score(self, email: str) -> float | None:
        got = self.store.get_by("contacts", "email", email)
        value = got and got["properties"].get("pql_score")
        return float(value) if value not in (None, "") else None

    def edit_score(self, email: str, value: int) -> None:
        self.store.upsert("contacts", [{"email": email, "pql_score": str(value)}])

    def company(self, domain: str, employees: int) -> None:
        self.store.upsert("companies", [{"domain": domain, "name": domain,
                                         "numberofemployees": str(employees)}])  # fmt: skip

    def meeting(self, email: str, at: datetime) -> None:
        contact = self.store.get_by("contacts", "email", email)
        [mid] = self.store.create("meetings", [{"hs_timestamp": at.isoformat()}])
        self.store.associate("meetings", mid, "contacts", contact["id"])

    def tasks(self) -> int:
        return self.store.count("tasks")


class SalesforceWorld:
    target = SalesforceTarget(kind="salesforce", verify="all")
    creates_fields = False  # an admin creates fields: the sync says which

    def __init__(self, sandbox):
        self.sandbox, self.store = sandbox, SalesforceStore(sandbox)

    def calls(self) -> int:
        """API requests the org has answered so far (logins are not API requests)."""
        c = self.sandbox.counters
        return c.get("salesforce", 0) - c.get("salesforce.oauth_token", 0)

    def later(self) -> None:
        """A second on: Salesforce's answers date our writes to the second, so the second of
        our last write is searched around."""
        time.sleep(1)

    def drop_field(self, name: str) -> None:
        """An admin deletes the Lead field the sync writes `name` to."""
        custom = json.loads(json.dumps(DEFAULT_CUSTOM_FIELDS))
        del custom["Lead"][getattr(self.target.fields, name)]
        self.sandbox.settings["salesforce_custom_fields"] = custom

    def _lead(self, email: str) -> dict | None:
        rows = self.store.query(f"SELECT Id, PQL_Score__c FROM Lead WHERE Email = '{email}'")
        return rows[0] if rows else None

    def person(self, email: str) -> None:
        self.store.create("Lead", [{"LastName": "Pat", "Company": "Acme", "Email": email}])

    def score(self, email: str) -> float | None:
        lead = self._lead(email)
        return None if lead is None or lead["PQL_Score__c"] is None else float(lead["PQL_Score__c"])

    def edit_score(self, email: str, value: int) -> None:
        self.store.update("Lead", self._lead(email)["Id"], {"PQL_Score__c": value})

    def company(self, domain: str, employees: int) -> None:
        self.store.create("Account", [{"Name": domain, "Website": f"https://{domain}",
                                       "NumberOfEmployees": employees}])  # fmt: skip

    def meeting(self, email: str, at: datetime) -> None:
        who = self._lead(email)["Id"]
        event = {"Subject": "Intro", "WhoId": who, "StartDateTime": at.isoformat()}
        self.store.create("Event", [{**event, "DurationInMinutes": 30}])

    def tasks(self) -> int:
        return self.store.count("Task")


WORLDS = {"hubspot": HubSpotWorld, "salesforce": SalesforceWorld}


@pytest.fixture(params=sorted(WORLDS))
def world(request, sandbox, monkeypatch):
    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    return WORLDS[request.param](sandbox)


def _frame(scores: dict[str, int]) -> pd.DataFrame:
    return pd.concat([scores_frame([e], s) for e, s in scores.items()], ignore_index=True)


def _connect(world, **settings) -> crm.Crm:
    target = world.target.model_copy(update=settings)
    return crm.connect(target, connections.from_env(target.connection_id))


def test_writes_what_changed_and_nothing_when_nothing_did(world, tmp_path):
    lake, adapter = Lake(tmp_path), _connect(world)
    world.person("known@acme.io")
    emails = ["known@acme.io", "new@acme.io"]
    first = adapter.sync(lake, scores_frame(emails, score=70))
    assert (first["written"], first["failed"], first["unchanged"]) == (2, 0, 0)
    assert world.score("known@acme.io") == world.score("new@acme.io") == 70
    again = adapter.sync(lake, scores_frame(emails, score=70))
    assert (again["written"], again["unchanged"]) == (0, 2)
    later = adapter.sync(lake, scores_frame(emails, score=85))
    assert later["written"] == 2 and world.score("new@acme.io") == 85


def test_a_quiet_run_after_a_large_write_makes_at_most_two_calls(world, tmp_path):
    """What a speed-to-lead run every few minutes usually is: nothing to write. No field check
    (remembered), and the change search goes around the records the last run wrote."""
    lake, adapter = Lake(tmp_path), _connect(world)
    emails = [f"user{i:03d}@acme.io" for i in range(450)]  # more than two search pages
    assert adapter.sync(lake, scores_frame(emails, score=70))["written"] == 450
    for _ in range(3):  # each run searches around the large write while it looks back on it
        before = world.calls()
        quiet = adapter.sync(lake, scores_frame(emails, score=70))
        assert (quiet["written"], quiet["unchanged"]) == (0, 450)
        assert world.calls() - before <= 2


@pytest.mark.parametrize("rule", ["overwrite", "keep"])
def test_an_edit_made_after_a_large_write_follows_the_rule(world, tmp_path, rule):
    lake, adapter = Lake(tmp_path), _connect(world, on_manual_edit=rule)
    emails = [f"user{i:03d}@acme.io" for i in range(150)]
    adapter.sync(lake, scores_frame(emails, score=70))
    world.later()
    world.edit_score("user000@acme.io", 5)
    if rule == "overwrite":
        got = adapter.sync(lake, scores_frame(emails, score=70))
        assert (got["edited_in_crm"], got["written"]) == (1, 1)
        assert world.score("user000@acme.io") == 70
    else:
        got = adapter.sync(lake, scores_frame(emails, score=80))
        assert (got["kept_manual_edits"], got["written"]) == (1, 149)
        assert (world.score("user000@acme.io"), world.score("user001@acme.io")) == (5, 80)


def test_small_changes_wait_for_the_full_run_and_flips_go_at_once(world, tmp_path):
    lake, adapter = Lake(tmp_path), _connect(world)
    start = {"pql@acme.io": 70, "low@acme.io": 30, "edited@acme.io": 70}
    adapter.sync(lake, _frame(start))
    world.edit_score("edited@acme.io", 5)
    now = {"pql@acme.io": 75, "low@acme.io": 60, "edited@acme.io": 72,  # +5, flips, edited
           "new.pql@acme.io": 80, "new.low@acme.io": 5}  # fmt: skip
    fresh = adapter.sync(lake, _frame(now), min_score_change=10)
    assert (fresh["deferred"], fresh["written"], fresh["edited_in_crm"]) == (2, 3, 1)
    assert (world.score("pql@acme.io"), world.score("low@acme.io")) == (70, 60)
    assert (world.score("new.pql@acme.io"), world.score("new.low@acme.io")) == (80, None)
    assert world.score("edited@acme.io") == 72  # a hand edit is handled as in a full run
    dry = adapter.sync(lake, _frame(now), dry_run=True, min_score_change=10)
    assert (dry["would_write"], dry["deferred"]) == (0, 2)
    full = adapter.sync(lake, _frame(now))
    assert (full["written"], full["unchanged"]) == (2, 3)
    assert (world.score("pql@acme.io"), world.score("new.low@acme.io")) == (75, 5)


def test_a_field_deleted_since_the_last_check_is_checked_again(world, tmp_path):
    lake, adapter = Lake(tmp_path), _connect(world)
    world.person("a@acme.io")
    adapter.sync(lake, scores_frame(["a@acme.io"], score=70))
    world.drop_field("reasons")
    if world.creates_fields:  # the check puts it back, and the write goes
        got = adapter.sync(lake, scores_frame(["a@acme.io"], score=80))
        assert (got["written"], got["failed"]) == (1, 0) and world.score("a@acme.io") == 80
        return
    with pytest.raises(crm.SyncError, match=r"missing fields .* Lead\.PQL_Reasons__c \(Long"):
        adapter.sync(lake, scores_frame(["a@acme.io"], score=80))
    before = world.calls()  # until it is back, each run checks before writing anything
    with pytest.raises(crm.SyncError, match=r"Lead\.PQL_Reasons__c"):
        adapter.sync(lake, scores_frame(["a@acme.io"], score=80))
    assert world.calls() - before == 2  # describe Lead and Contact, no write
    assert world.score("a@acme.io") == 70


def test_the_field_check_is_remembered_a_day_and_for_the_same_fields(world, tmp_path):
    lake, adapter = Lake(tmp_path), _connect(world)
    emails = ["a@acme.io"]
    adapter.sync(lake, scores_frame(emails))
    before = world.calls()
    adapter.sync(lake, scores_frame(emails))
    quiet = world.calls() - before
    path = lake.sync(world.target.kind) / "provisioned.json"
    done = json.loads(path.read_text())
    done["checked_at"] = (datetime.now(UTC) - timedelta(days=1, minutes=1)).isoformat()
    path.write_text(json.dumps(done))
    before = world.calls()
    adapter.sync(lake, scores_frame(emails))
    assert world.calls() - before > quiet  # a day on: checked again
    before = world.calls()
    adapter.sync(lake, scores_frame(emails))
    assert world.calls() - before == quiet
    # Another mapping: checked before anything is written (HubSpot creates the property).
    fields = world.target.fields.model_copy(update={"model_version": "other_version__c"})
    other = _connect(world, fields=fields)
    if world.creates_fields:
        assert other.sync(lake, scores_frame(emails))["written"] == 1
        assert json.loads(path.read_text())["checked"]["fields"]["model_version"] == (
            "other_version__c"
        )
    else:
        with pytest.raises(crm.SyncError, match=r"Lead\.other_version__c \(Text\(80\)\)"):
            other.sync(lake, scores_frame(emails))


def test_a_dry_run_says_what_would_change_and_writes_nothing(world, tmp_path):
    adapter = _connect(world)
    dry = adapter.sync(Lake(tmp_path), scores_frame(["a@acme.io"], score=70), dry_run=True)
    assert dry["would_write"] == 1 and dry["sample"][0]["new_record"]
    assert world.score("a@acme.io") is None


def test_people_missing_from_the_crm_are_counted_when_not_creating(world, tmp_path):
    adapter = _connect(world, create_missing=False)
    world.person("known@acme.io")
    got = adapter.sync(Lake(tmp_path), scores_frame(["known@acme.io", "ghost@acme.io"]))
    assert (got["written"], got["not_in_crm"]) == (1, 1) and world.score("ghost@acme.io") is None


@pytest.mark.parametrize("rule", ["overwrite", "keep"])
def test_a_value_edited_by_hand_follows_the_rule(world, tmp_path, rule):
    lake, adapter = Lake(tmp_path), _connect(world, on_manual_edit=rule)
    emails = ["a@acme.io", "b@acme.io"]
    for e in emails:
        world.person(e)
    adapter.sync(lake, scores_frame(emails, score=70))
    world.edit_score("a@acme.io", 5)
    if rule == "overwrite":  # written back even though the computed value did not change
        got = adapter.sync(lake, scores_frame(emails, score=70))
        assert (got["edited_in_crm"], got["written"]) == (1, 1)
        assert world.score("a@acme.io") == 70
    else:  # kept, also when the computed value changes
        got = adapter.sync(lake, scores_frame(emails, score=80))
        assert (got["kept_manual_edits"], got["written"]) == (1, 1)
        assert (world.score("a@acme.io"), world.score("b@acme.io")) == (5, 80)


def test_too_many_rejected_records_fail_the_run_naming_them(world, tmp_path):
    adapter = _connect(world, max_failed_share=0.1)
    with pytest.raises(crm.SyncError, match=r"1 of 2 records were rejected by .*not-an-email"):
        adapter.sync(Lake(tmp_path), scores_frame(["ok@acme.io", "not-an-email"]))
    assert world.score("ok@acme.io") == 70


def test_accounts_are_read_for_enrichment_by_domain(world):
    world.company("acme.io", 250)
    got = _connect(world).read_accounts().set_index("domain")
    assert float(got.loc["acme.io", "employees"]) == 250


def test_a_follow_up_task_per_new_lead_the_crm_has(world):
    world.person("a@acme.io")
    leads = scores_frame(["a@acme.io", "unknown@acme.io"]).assign(
        flag=True, qualified_at=pd.Timestamp("2026-11-01", tz="UTC")
    )
    made: list = []
    _connect(world).create_tasks(leads, Routing(crm_task=True), NOW, made)
    assert [m[0] for m in made] == ["a@acme.io"] and world.tasks() == 1


def test_meetings_are_pulled_with_the_persons_email_and_only_when_changed(world):
    world.person("a@acme.io")
    at = datetime(2026, 10, 5, 9, tzinfo=UTC)
    world.meeting("a@acme.io", at)
    adapter = _connect(world)
    got = adapter.pull_outcomes(None)
    assert set(got) == set(outcomes.KINDS)
    rows = got["meetings"].rows
    assert list(rows["email"]) == ["a@acme.io"]
    assert pd.Timestamp(rows["meeting_at"].iloc[0]) == pd.Timestamp(at)
    later = adapter.pull_outcomes(datetime.now(UTC) + timedelta(minutes=1))
    assert later["meetings"].rows.empty
