"""A person's values follow their record: a Lead converted to a Contact, a Contact created for a
known email, two HubSpot contacts merged, an Account whose Website changed. Each run ends with
the full current values on the record sales looks at now, whatever the score did, and nothing
written to a converted Lead or re-created after a merge."""

from __future__ import annotations

import pandas as pd
import pytest

from pql.config import HubSpotTarget, SalesforceTarget
from pql.crm import hubspot as crm_hubspot
from pql.crm import salesforce as crm_salesforce
from pql.crm.ledger import load_ledger, records
from pql.lake import Lake
from sandbox.hubspot import HubSpotStore
from sandbox.salesforce import SalesforceStore, convert_lead
from tests.conftest import scores_frame

SF = SalesforceTarget(kind="salesforce", max_failed_share=0.5)
HS = HubSpotTarget(kind="hubspot", max_failed_share=0.5)
PQL = ["PQL_Score__c", "PQL_Flag__c", "PQL_Qualified_At__c", "PQL_Reasons__c",
       "PQL_Model_Version__c"]  # fmt: skip
EMAILS = ["ana@acme.io", "bo@acme.io", "cy@acme.io"]


def _scores(scores: dict[str, int]) -> pd.DataFrame:
    frames = [scores_frame([e], s) for e, s in scores.items()]
    return pd.concat(frames, ignore_index=True)


def _sf_values(store: SalesforceStore, obj: str, email: str) -> list[dict]:
    cols = ", ".join(["Id", *PQL])
    return store.query(f"SELECT {cols} FROM {obj} WHERE Email = '{email}' ORDER BY Id")


def _sf_writes(sandbox) -> int:
    c = sandbox.counters
    return sum(c[k] for k in c if k.startswith("salesforce.collections_") or "ingest" in k)


# --- Salesforce --------------------------------------------------------------------------------


@pytest.mark.parametrize("mapping", [False, True], ids=["unmapped", "mapped"])
def test_a_lead_converted_between_runs_gets_its_values_on_the_contact(
    sandbox, sf, tmp_path, mapping
):
    if mapping:  # the admin mapped the PQL fields from Lead to Contact
        sandbox.settings["salesforce_lead_field_mapping"] = {f: f for f in PQL}
    lake, store = Lake(tmp_path), SalesforceStore(sandbox)
    scores = _scores({"ana@acme.io": 80, "bo@acme.io": 30, "cy@acme.io": 60})
    assert crm_salesforce.sync(sf, lake, SF, scores)["written"] == 3
    [lead] = _sf_values(store, "Lead", "ana@acme.io")
    converted = convert_lead(sf, lead["Id"])
    assert converted["success"], converted
    [contact] = _sf_values(store, "Contact", "ana@acme.io")
    assert (contact["PQL_Score__c"] is not None) == mapping
    again = crm_salesforce.sync(sf, lake, SF, scores)  # the score did not move
    assert (again["written"], again["moved"], again["failed"]) == (1, 1, 0)
    [contact] = _sf_values(store, "Contact", "ana@acme.io")
    assert contact["Id"] == converted["contactId"]
    assert (contact["PQL_Score__c"], contact["PQL_Flag__c"]) == (80, True)
    assert contact["PQL_Reasons__c"] == "invited 3 teammates"
    assert contact["PQL_Model_Version__c"] == "weighted-test"
    [lead_now] = _sf_values(store, "Lead", "ana@acme.io")
    assert lead_now == lead  # nothing written to the converted Lead
    assert records(load_ledger(lake, crm="salesforce"))["ana@acme.io"] == (
        f"Contact/{converted['contactId']}"
    )
    third = crm_salesforce.sync(sf, lake, SF, scores)
    assert (third["written"], third.get("moved", 0)) == (0, 0)
    changed = _scores({"ana@acme.io": 90, "bo@acme.io": 30, "cy@acme.io": 60})
    assert crm_salesforce.sync(sf, lake, SF, changed)["written"] == 1
    assert _sf_values(store, "Contact", "ana@acme.io")[0]["PQL_Score__c"] == 90
    assert _sf_values(store, "Lead", "ana@acme.io") == [lead]


def test_a_contact_created_by_hand_for_a_known_email_takes_the_values(sandbox, sf, tmp_path):
    lake, store = Lake(tmp_path), SalesforceStore(sandbox)
    scores = _scores({"ana@acme.io": 80, "bo@acme.io": 30})
    crm_salesforce.sync(sf, lake, SF, scores)
    [lead] = _sf_values(store, "Lead", "bo@acme.io")
    [account] = store.create("Account", [{"Name": "Acme"}])
    sf.Contact.create({"LastName": "Bo", "Email": "bo@acme.io", "AccountId": account})
    again = crm_salesforce.sync(sf, lake, SF, scores)
    assert (again["written"], again["moved"]) == (1, 1)
    [contact] = _sf_values(store, "Contact", "bo@acme.io")
    assert (contact["PQL_Score__c"], contact["PQL_Flag__c"]) == (30, False)
    assert _sf_values(store, "Lead", "bo@acme.io") == [lead]


@pytest.mark.parametrize("rule", ["keep", "overwrite"])
def test_a_new_record_is_not_mistaken_for_a_hand_edit(sandbox, sf, tmp_path, rule):
    target = SalesforceTarget(kind="salesforce", on_manual_edit=rule)
    lake, store = Lake(tmp_path), SalesforceStore(sandbox)
    scores = _scores({"ana@acme.io": 80})
    crm_salesforce.sync(sf, lake, target, scores)
    [lead] = _sf_values(store, "Lead", "ana@acme.io")
    assert convert_lead(sf, lead["Id"])["success"]
    assert crm_salesforce.sync(sf, lake, target, scores)["written"] == 1
    assert _sf_values(store, "Contact", "ana@acme.io")[0]["PQL_Score__c"] == 80


def test_writes_go_by_the_ledgers_record_without_lookups(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    crm_salesforce.sync(sf, lake, SF, _scores({e: 70 for e in EMAILS}))
    before = dict(sandbox.counters)
    again = crm_salesforce.sync(sf, lake, SF, _scores({e: 80 for e in EMAILS}))
    assert (again["written"], again["failed"]) == (3, 0)
    queries = sandbox.counters["salesforce.query"] - before["salesforce.query"]
    assert queries == 3  # a change query per object and the read-back: no lookup by email


def test_a_move_the_change_check_missed_is_found_by_the_write(sandbox, sf, tmp_path):
    """A Lead converted while a large run wrote (a span the change check goes around): the
    write to the Lead is refused, so the person is looked up and written where they live."""
    lake, store = Lake(tmp_path), SalesforceStore(sandbox)
    crm_salesforce.sync(sf, lake, SF, _scores({e: 70 for e in EMAILS}))
    [lead] = _sf_values(store, "Lead", "cy@acme.io")
    converted = convert_lead(sf, lead["Id"])
    assert converted["success"], converted
    state = lake.sync("salesforce") / "ledger" / "state.json"
    state.write_text('{"edits_since": "2099-01-01T00:00:00+00:00"}')  # the check sees nothing
    again = crm_salesforce.sync(sf, lake, SF, _scores({e: 90 for e in EMAILS}))
    assert (again["written"], again["failed"], again["relocated"]) == (3, 0, 1)
    [contact] = _sf_values(store, "Contact", "cy@acme.io")
    assert contact["Id"] == converted["contactId"] and contact["PQL_Score__c"] == 90
    assert records(load_ledger(lake, crm="salesforce"))["cy@acme.io"] == (
        f"Contact/{converted['contactId']}"
    )


def test_a_ledger_from_before_records_repairs_contacts_left_empty(sandbox, sf, tmp_path):
    """Deployments from before the ledger kept records may hold converted people whose
    Contact never got the values: the first run finds every record once and repairs those."""
    lake, store = Lake(tmp_path), SalesforceStore(sandbox)
    scores = _scores({e: 70 for e in EMAILS})
    crm_salesforce.sync(sf, lake, SF, scores)
    [lead] = _sf_values(store, "Lead", "cy@acme.io")
    assert convert_lead(sf, lead["Id"])["success"]
    path = lake.sync("salesforce") / "ledger" / "ledger.parquet"
    old = pd.read_parquet(path).drop(columns=["record"])
    old.to_parquet(path, index=False)
    # Long before: the conversion is older than the last run, so no change check sees it.
    state = path.parent / "state.json"
    state.write_text('{"edits_since": "2099-01-01T00:00:00+00:00"}')
    before = _sf_writes(sandbox)
    again = crm_salesforce.sync(sf, lake, SF, scores)
    assert (again["written"], again["moved"]) == (1, 1)
    assert _sf_writes(sandbox) == before + 1
    assert _sf_values(store, "Contact", "cy@acme.io")[0]["PQL_Score__c"] == 70
    held = records(load_ledger(lake, crm="salesforce"))
    assert set(held) == set(EMAILS)
    assert held["cy@acme.io"].startswith("Contact/") and held["ana@acme.io"].startswith("Lead/")
    assert crm_salesforce.sync(sf, lake, SF, scores)["written"] == 0


def test_an_account_whose_website_changed_gets_the_qualification(sandbox, sf, tmp_path):
    lake, store = Lake(tmp_path), SalesforceStore(sandbox)
    target = SalesforceTarget(kind="salesforce", sync_accounts=True)
    old, new = store.create("Account", [{"Name": "Acme (old)", "Website": "https://acme.io"},
                                        {"Name": "Acme", "Website": "acme-group.com"}])  # fmt: skip
    rollup = pd.DataFrame({"account_key": ["acme.io"], "qualified": [True], "best_score": [88],
                           "reasons": ["3 of 4 active users qualified"]})  # fmt: skip
    assert crm_salesforce.sync_accounts(sf, lake, target, rollup)["written"] == 1
    sf.Account.update(old, {"Website": "acme-old.example"})
    sf.Account.update(new, {"Website": "www.acme.io"})
    again = crm_salesforce.sync_accounts(sf, lake, target, rollup)
    assert (again["written"], again["moved"]) == (1, 1)
    [acct] = store.query(f"SELECT PQA_Qualified__c, PQA_Best_Score__c FROM Account "
                         f"WHERE Id = '{new}'")  # fmt: skip
    assert (acct["PQA_Qualified__c"], acct["PQA_Best_Score__c"]) == (True, 88)
    assert crm_salesforce.sync_accounts(sf, lake, target, rollup)["written"] == 0


# --- HubSpot -----------------------------------------------------------------------------------


@pytest.fixture
def hs(sandbox):
    return crm_hubspot.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)


def _hs_contacts(sandbox) -> dict[str, dict]:
    return {r["properties"]["email"]: {"id": r["id"], **r["properties"]}
            for r in HubSpotStore(sandbox).list("contacts")}  # fmt: skip


@pytest.mark.parametrize("primary", ["ana@acme.io", "bo@acme.io"])
def test_merged_contacts_hold_the_primary_persons_values_and_stay_merged(
    sandbox, hs, tmp_path, primary
):
    from hubspot.crm.contacts import PublicMergeInput

    lake = Lake(tmp_path)
    scores = _scores({"ana@acme.io": 80, "bo@acme.io": 30, "cy@acme.io": 60})
    crm_hubspot.sync(hs, lake, HS, scores)
    before = _hs_contacts(sandbox)
    other = "bo@acme.io" if primary == "ana@acme.io" else "ana@acme.io"
    pair = PublicMergeInput(primary_object_id=before[primary]["id"],
                            object_id_to_merge=before[other]["id"])  # fmt: skip
    merged = hs.crm.contacts.basic_api.merge(public_merge_input=pair)
    # A rep edits the merged record meanwhile: the primary person's values must win anyway.
    hs.crm.contacts.basic_api.update(merged.id, {"properties": {"pql_score": "5"}})
    again = crm_hubspot.sync(hs, lake, HS, scores)
    assert (again["moved"], again["merged_away"], again["failed"]) == (1, 1, 0)
    after = _hs_contacts(sandbox)
    assert set(after) == {primary, "cy@acme.io"}  # the merged-away person is not re-created
    assert after[primary]["id"] == merged.id
    want = scores.set_index("email").loc[primary, "score"]
    assert after[primary]["pql_score"] == str(want)
    held = records(load_ledger(lake))
    assert held[primary] == f"contacts/{merged.id}" and held[other].startswith("merged:")
    changed = _scores({"ana@acme.io": 95, "bo@acme.io": 10, "cy@acme.io": 60})
    third = crm_hubspot.sync(hs, lake, HS, changed)
    assert third["written"] == 1 and third["merged_away"] == 1
    after = _hs_contacts(sandbox)
    assert set(after) == {primary, "cy@acme.io"}
    assert after[primary]["pql_score"] == str(changed.set_index("email").loc[primary, "score"])


def test_a_company_whose_domain_changed_gets_the_qualification(sandbox, hs, tmp_path):
    lake, store = Lake(tmp_path), HubSpotStore(sandbox)
    target = HubSpotTarget(kind="hubspot", sync_accounts=True)
    old, new = store.create(
        "companies",
        [{"name": "Acme (old)", "domain": "acme.io"}, {"name": "Acme", "domain": "acme-group.com"}],
    )
    rollup = pd.DataFrame({"account_key": ["acme.io"], "qualified": [True], "best_score": [88],
                           "reasons": ["3 of 4 active users qualified"]})  # fmt: skip
    assert crm_hubspot.sync_accounts(hs, lake, target, rollup)["written"] == 1
    hs.crm.companies.basic_api.update(old, {"properties": {"domain": "acme-old.example"}})
    hs.crm.companies.basic_api.update(new, {"properties": {"domain": "acme.io"}})
    again = crm_hubspot.sync_accounts(hs, lake, target, rollup)
    assert (again["written"], again["moved"]) == (1, 1)
    props = store.get_by("companies", "domain", "acme.io")["properties"]
    assert store.get_by("companies", "domain", "acme.io")["id"] == str(new)
    assert (props["pql_account_qualified"], props["pql_account_score"]) == ("true", "88")
    assert crm_hubspot.sync_accounts(hs, lake, target, rollup)["written"] == 0
