"""Salesforce sync against the sandbox emulator (simple-salesforce over TLS): field check, diff,
Contacts and converted Leads, per-record failures, lock retries, Bulk API 2.0, session refresh."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pql.config import SalesforceTarget
from pql.crm import salesforce as crm
from pql.crm.hubspot import SyncError, load_ledger
from pql.lake import Lake
from sandbox.salesforce import SalesforceStore
from sandbox.salesforce_store import DEFAULT_CUSTOM_FIELDS
from tests.conftest import scores_frame as _scores

TARGET = SalesforceTarget(kind="salesforce", max_failed_share=0.5)


def _writes(sandbox) -> int:
    c = sandbox.counters
    return sum(c[k] for k in c if k.startswith("salesforce.collections_") or "ingest" in k)


def _lead(store, email):
    return store.query(f"SELECT Id, PQL_Score__c, LeadSource FROM Lead WHERE Email = '{email}'")


def test_missing_field_is_named_with_its_type(sandbox, sf, tmp_path):
    custom = json.loads(json.dumps(DEFAULT_CUSTOM_FIELDS))
    del custom["Contact"]["PQL_Reasons__c"]
    sandbox.settings["salesforce_custom_fields"] = custom
    with pytest.raises(SyncError) as err:
        crm.sync(sf, Lake(tmp_path), TARGET, _scores(["a@acme.io"]))
    assert "Contact.PQL_Reasons__c (Long Text Area(32768))" in str(err.value)
    assert "Lead." not in str(err.value)


def test_creates_leads_then_writes_only_changes(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    emails = [f"user{i}@acme.io" for i in range(250)]
    first = crm.sync(sf, lake, TARGET, _scores(emails))
    assert (first["written"], first["failed"], first["created"]) == (250, 0, 250)
    store = SalesforceStore(sandbox)
    [lead] = store.query(
        "SELECT LastName, Company, LeadSource, PQL_Score__c, PQL_Flag__c, PQL_Reasons__c, "
        "PQL_Qualified_At__c FROM Lead WHERE Email = 'user7@acme.io'"
    )
    assert (lead["LastName"], lead["Company"], lead["LeadSource"]) == (
        "user7",
        "acme.io",
        "Product",
    )
    assert (lead["PQL_Score__c"], lead["PQL_Flag__c"]) == (70, True)
    assert lead["PQL_Qualified_At__c"].startswith("2026-10-01T00:00:00")
    before = _writes(sandbox)
    again = crm.sync(sf, lake, TARGET, _scores(emails))
    assert (again["written"], again["unchanged"]) == (0, 250)
    assert _writes(sandbox) == before
    changed = _scores(emails)
    changed.loc[:9, "score"] = 80
    third = crm.sync(sf, lake, TARGET, changed)
    assert (third["written"], third["created"]) == (10, 0)
    assert _writes(sandbox) == before + 1
    assert store.count("Lead") == 250
    assert crm.sync(sf, lake, TARGET, changed, dry_run=True)["would_write"] == 0


def test_contacts_and_converted_leads_get_the_values(sandbox, sf, tmp_path):
    store = SalesforceStore(sandbox)
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact, converted_to] = store.create(
        "Contact",
        [
            {"LastName": "Ng", "Email": "ana@acme.io", "AccountId": account},
            {"LastName": "Lee", "Email": "kim.contact@acme.io", "AccountId": account},
        ],
    )
    [old_lead] = store.create(
        "Lead", [{"LastName": "Kim", "Company": "Acme", "Email": "kim@acme.io"}]
    )
    store.convert_lead(old_lead, account, converted_to)
    result = crm.sync(sf, Lake(tmp_path), TARGET, _scores(["ana@acme.io", "kim@acme.io"]))
    assert (result["written"], result["created"]) == (2, 0)
    assert store.count("Lead") == 1
    assert store.get(contact)["PQL_Score__c"] == 70
    assert store.get(converted_to)["PQL_Score__c"] == 70
    assert store.get(old_lead).get("PQL_Score__c") is None


def test_skips_missing_when_not_creating(sandbox, sf, tmp_path):
    target = SalesforceTarget(kind="salesforce", create_missing=False)
    result = crm.sync(sf, Lake(tmp_path), target, _scores(["new@acme.io"]))
    assert (result["written"], result["not_in_crm"]) == (0, 1)
    assert SalesforceStore(sandbox).count("Lead") == 0


def test_rejected_records_are_recorded_and_retried(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    emails = [f"user{i}@acme.io" for i in range(30)] + ["not-an-email"]
    result = crm.sync(sf, lake, TARGET, _scores(emails))
    assert (result["written"], result["failed"]) == (30, 1)
    run = pd.read_parquet(next(lake.sync("salesforce").glob("run=*")) / "results.parquet")
    bad = run[run["status"] == "failed"].iloc[0]
    assert bad["email"] == "not-an-email" and bad["status_code"] == "INVALID_EMAIL_ADDRESS"
    assert "invalid email" in bad["message"]
    assert "not-an-email" not in set(load_ledger(lake, crm="salesforce")["email"])
    retry = crm.sync(sf, lake, TARGET, _scores(emails))
    assert (retry["written"], retry["failed"], retry["unchanged"]) == (0, 1, 30)


def test_too_many_failures_fail_the_run(sandbox, sf, tmp_path):
    strict = SalesforceTarget(kind="salesforce", max_failed_share=0.01)
    with pytest.raises(SyncError, match="1 of 3 records were rejected.*INVALID_EMAIL_ADDRESS"):
        crm.sync(sf, Lake(tmp_path), strict, _scores(["a@x.io", "b@x.io", "nope"]))


def test_locked_records_are_retried_alone(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    emails = [f"user{i}@acme.io" for i in range(5)]
    crm.sync(sf, lake, TARGET, _scores(emails))
    creates = sandbox.counters["salesforce.collections_create"]
    sandbox.queue_fault("salesforce_lock", 400, count=2)
    result = crm.sync(sf, lake, TARGET, _scores(emails, score=90))
    assert (result["written"], result["failed"]) == (5, 0)
    assert sandbox.counters["salesforce.collections_update"] == 2  # all five, then the two
    assert sandbox.counters["salesforce.collections_create"] == creates
    scores = {
        r["PQL_Score__c"] for r in SalesforceStore(sandbox).query("SELECT PQL_Score__c FROM Lead")
    }
    assert scores == {90}


def test_bulk_path_above_the_threshold_with_a_failed_record(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    target = SalesforceTarget(kind="salesforce", bulk_threshold=5, max_failed_share=0.5)
    emails = [f"user{i}@acme.io" for i in range(8)] + ["bad email"]
    first = crm.sync(sf, lake, target, _scores(emails))
    assert first["api"] == "bulk"
    assert (first["written"], first["failed"]) == (8, 1)
    assert sandbox.counters["salesforce.collections_create"] == 0
    run = pd.read_parquet(next(lake.sync("salesforce").glob("run=*")) / "results.parquet")
    assert run.set_index("email").at["bad email", "status_code"] == "INVALID_EMAIL_ADDRESS"
    second = crm.sync(sf, lake, target, _scores(emails, score=20))  # bulk update, nulls too
    assert (second["written"], second["failed"], second["api"]) == (8, 1, "bulk")
    [lead] = SalesforceStore(sandbox).query(
        "SELECT PQL_Score__c, PQL_Flag__c, PQL_Qualified_At__c FROM Lead "
        "WHERE Email = 'user3@acme.io'"
    )
    assert (lead["PQL_Score__c"], lead["PQL_Flag__c"], lead["PQL_Qualified_At__c"]) == (
        20,
        False,
        None,
    )
    results = sandbox.counters["salesforce.bulk_ingest_results"]
    assert results > 0  # the jobs above had failures: results were read
    target = target.model_copy(update={"create_missing": False})  # the bad email: skipped
    third = crm.sync(sf, lake, target, _scores(emails, score=30))
    assert (third["written"], third["api"]) == (8, "bulk")
    # A clean update job: the ids are known, so no result downloads.
    assert sandbox.counters.get("salesforce.bulk_ingest_results", 0) == results


def test_expired_session_is_refreshed_once(sandbox, sf_login, tmp_path):
    sf = sf_login()
    SalesforceStore(sandbox).expire_sessions()
    result = crm.sync(sf, Lake(tmp_path), TARGET, _scores(["a@acme.io"]), login=sf_login)
    assert result["written"] == 1 and len(sf_login.calls) == 2
    SalesforceStore(sandbox).expire_sessions()
    with pytest.raises(SyncError, match="INVALID_SESSION_ID"):
        crm.sync(sf, Lake(tmp_path), TARGET, _scores(["b@acme.io"]))

    def expired_login():
        fresh = sf_login()
        SalesforceStore(sandbox).expire_sessions()
        return fresh

    SalesforceStore(sandbox).expire_sessions()
    with pytest.raises(SyncError, match="again after logging in again"):
        crm.sync(sf, Lake(tmp_path), TARGET, _scores(["c@acme.io"]), login=expired_login)


def test_dag_path_hook_login_and_jobs_dispatch(sandbox, tmp_path, monkeypatch):
    from datetime import date

    from pql import config, pipeline
    from pql_airflow.hooks import CrmHook
    from sandbox.salesforce import connection_env

    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    cfg = config.load().model_copy(
        update={"lake": config.LakeSettings(root=tmp_path), "crm": TARGET}
    )
    day = date(2026, 11, 20)
    folder = Lake(tmp_path).scores(day)
    folder.mkdir(parents=True)
    _scores(["ana@acme.io", "bo@beta.dev"]).to_parquet(folder / "scores.parquet")
    result = pipeline.sync(cfg, day, CrmHook(cfg).get_conn())
    assert (result["written"], result["created"]) == (2, 2)
    assert SalesforceStore(sandbox).count("Lead") == 2


def test_salesforce_accounts_are_an_enrichment_provider(sandbox, sf, tmp_path, monkeypatch):
    from pql import config, pipeline
    from pql.crm import salesforce as crm_salesforce
    from pql.enrich import firmographics

    sf.Account.create({"Name": "Acme", "Website": "https://www.Acme.io/about",
                       "NumberOfEmployees": 250, "Industry": "Technology",
                       "BillingCountry": "US", "AnnualRevenue": 25_000_000})  # fmt: skip
    sf.Account.create({"Name": "No site", "NumberOfEmployees": 3})
    got = crm_salesforce.read_accounts(sf).set_index("domain")
    assert list(got.index) == ["acme.io"]  # an Account without a website has no domain
    want = {"employees": 250, "industry": "Technology", "country": "US",
            "revenue_band": "$10M-$50M"}  # fmt: skip
    assert got.loc["acme.io"].to_dict() == want
    cfg = config.load().model_copy(
        update={
            "lake": config.LakeSettings(root=tmp_path),
            "crm": TARGET,
            "enrichment": config.Enrichment(provider="crm"),
        }
    )
    assert pipeline.refresh_accounts(cfg, crm_salesforce.adapter(sf))["accounts"] == 1
    kept = firmographics.read(Lake(tmp_path)).set_index("domain")
    assert kept.loc["acme.io", "employees"] == 250 and kept.loc["acme.io", "revenue_band"] == (
        "$10M-$50M"
    )


def test_account_qualification_goes_to_accounts_by_website_domain(sandbox, sf, tmp_path):
    from pql.crm import salesforce as crm_salesforce

    acme = sf.Account.create({"Name": "Acme", "Website": "https://www.acme.io"})["id"]
    sf.Account.create({"Name": "Beta", "Website": "beta.dev/home"})
    rollup = pd.DataFrame(
        {
            "account_key": ["acme.io", "beta.dev", "nowhere.io"],
            "qualified": [True, False, True],
            "best_score": [90, 40, 70],
            "reasons": ["3 of 4 active users qualified", "0 of 2", "1 of 1"],
        }
    )
    lake = Lake(tmp_path)
    first = crm_salesforce.sync_accounts(sf, lake, TARGET, rollup)
    assert (first["written"], first["not_in_crm"], first["failed"]) == (2, 1, 0)
    held = sf.Account.get(acme)
    assert held["PQA_Qualified__c"] is True and held["PQA_Best_Score__c"] == 90
    assert held["PQA_Reasons__c"] == "3 of 4 active users qualified"
    before = _writes(sandbox)
    again = crm_salesforce.sync_accounts(sf, lake, TARGET, rollup)
    assert again["written"] == 0 and again["unchanged"] == 2
    rollup.loc[1, ["qualified", "best_score"]] = [True, 60]
    assert crm_salesforce.sync_accounts(sf, lake, TARGET, rollup)["written"] == 1
    assert _writes(sandbox) - before == 1  # only the changed account was written


def test_lock_errors_in_a_bulk_job_are_retried_for_those_records_only(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    target = SalesforceTarget(kind="salesforce", bulk_threshold=5)
    emails = [f"user{i}@acme.io" for i in range(8)]
    crm.sync(sf, lake, target, _scores(emails))
    sandbox.queue_fault("salesforce_lock", 400, count=2)
    result = crm.sync(sf, lake, target, _scores(emails, score=90))
    assert (result["written"], result["failed"], result["api"]) == (8, 0, "bulk")
    # The job wrote six; the two locked records went again alone, through one Collections call.
    assert sandbox.counters["salesforce.collections_update"] == 1
    held = SalesforceStore(sandbox).query("SELECT PQL_Score__c FROM Lead")
    assert [r["PQL_Score__c"] for r in held] == [90] * 8


@pytest.mark.parametrize("rule", ["overwrite", "keep"])
def test_values_edited_by_hand_follow_the_rule(sandbox, sf, tmp_path, rule):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"on_manual_edit": rule})
    store = SalesforceStore(sandbox)
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact] = store.create(
        "Contact", [{"LastName": "Ng", "Email": "ana@acme.io", "AccountId": account}]
    )
    emails = ["ana@acme.io", "bo@acme.io", "cy@acme.io"]
    crm.sync(sf, lake, target, _scores(emails))
    # A rep edits two scores by hand: a Contact's and a Lead's; the computed scores stay.
    sf.Contact.update(contact, {"PQL_Score__c": 5})
    [bo] = _lead(store, "bo@acme.io")
    sf.Lead.update(bo["Id"], {"PQL_Score__c": 6})
    same = crm.sync(sf, lake, target, _scores(emails))
    if rule == "overwrite":
        assert (same["edited_in_crm"], same["written"]) == (2, 2)
        assert store.get(contact)["PQL_Score__c"] == 70
        assert _lead(store, "bo@acme.io")[0]["PQL_Score__c"] == 70
    else:
        assert same["written"] == 0
    later = crm.sync(sf, lake, target, _scores(emails, score=80))
    if rule == "overwrite":
        assert later["written"] == 3 and later["edited_in_crm"] == 0
        assert store.get(contact)["PQL_Score__c"] == 80
    else:  # kept for good, not only on the run that noticed it
        assert (later["written"], later["kept_manual_edits"]) == (1, 2)
        assert store.get(contact)["PQL_Score__c"] == 5
        assert _lead(store, "bo@acme.io")[0]["PQL_Score__c"] == 6
    assert _lead(store, "cy@acme.io")[0]["PQL_Score__c"] == 80


def test_a_write_salesforce_did_not_keep_is_not_marked_synced(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"verify": "all", "max_failed_share": 1.0})
    emails = [f"user{i}@acme.io" for i in range(3)]
    crm.sync(sf, lake, target, _scores(emails))
    sandbox.queue_fault("salesforce_lost_write", 200)  # answered as saved, then reverted
    lost = crm.sync(sf, lake, target, _scores(emails, score=90))
    assert (lost["written"], lost["failed"]) == (0, 3)
    run = pd.read_parquet(max(lake.sync("salesforce").glob("run=*")) / "results.parquet")
    assert set(run["message"]) == {"read back differs on PQL_Score__c"} and run["transient"].all()
    retry = crm.sync(sf, lake, target, _scores(emails, score=90))
    assert (retry["written"], retry["failed"]) == (3, 0)
    held = SalesforceStore(sandbox).query("SELECT PQL_Score__c FROM Lead")
    assert [r["PQL_Score__c"] for r in held] == [90] * 3


def test_unflag_off_keeps_a_lead_flagged_once_written(sandbox, sf, tmp_path):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"unflag": False})
    crm.sync(sf, lake, target, _scores(["kim@acme.io"], score=70))
    crm.sync(sf, lake, target, _scores(["kim@acme.io"], score=30))
    [lead] = SalesforceStore(sandbox).query(
        "SELECT PQL_Score__c, PQL_Flag__c FROM Lead WHERE Email = 'kim@acme.io'"
    )
    assert (lead["PQL_Score__c"], lead["PQL_Flag__c"]) == (30, True)


def test_users_matched_on_an_external_id_field(sandbox, sf, tmp_path):
    custom = json.loads(json.dumps(DEFAULT_CUSTOM_FIELDS))
    for obj in ("Lead", "Contact"):
        custom[obj]["Product_User_Id__c"] = {"type": "string", "length": 80, "externalId": True}
    sandbox.settings["salesforce_custom_fields"] = custom
    store = SalesforceStore(sandbox)
    # The Contact's email differs from the product's: only the user id finds it.
    [contact] = store.create(
        "Contact", [{"LastName": "Ng", "Email": "ana@corp.io", "Product_User_Id__c": "u-1"}]
    )
    target = TARGET.model_copy(update={"match_on": "Product_User_Id__c"})
    scores = _scores(["ana@acme.io", "bo@acme.io"]).assign(user_key=["u-1", "u-2"])
    result = crm.sync(sf, Lake(tmp_path), target, scores)
    assert (result["written"], result["created"]) == (2, 1)
    assert store.get(contact)["PQL_Score__c"] == 70
    [lead] = store.query("SELECT Email, Product_User_Id__c, PQL_Score__c FROM Lead")
    assert (lead["Email"], lead["Product_User_Id__c"], lead["PQL_Score__c"]) == (
        "bo@acme.io",
        "u-2",
        70,
    )


def test_cli_sync_and_dry_run_against_salesforce(sandbox, tmp_path, monkeypatch):
    from datetime import date

    from click.testing import CliRunner

    from pql import cli, config
    from sandbox.salesforce import connection_env

    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    cfg_path = tmp_path / "pql.yaml"
    text = config.DEFAULT_CONFIG.read_text().replace("root: ../var/lake", f"root: {tmp_path}")
    head, _, rest = text.partition("\ncrm:\n")
    tail = rest[rest.index("\nrouting:") :]
    cfg_path.write_text(f"{head}\ncrm:\n  kind: salesforce\n{tail}")
    assert config.load(cfg_path).crm.kind == "salesforce"
    day = date(2026, 11, 20)
    lake = Lake(tmp_path)
    lake.scores(day).mkdir(parents=True)
    _scores(["ana@acme.io", "bo@acme.io"]).to_parquet(lake.scores(day) / "scores.parquet")
    args = ["sync", "--config", str(cfg_path), "--day", str(day)]
    dry = CliRunner().invoke(cli.main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "2 would be written, 0 unchanged, nothing sent" in dry.output
    assert "ana@acme.io (new)" in dry.output and "PQL_Score__c: None -> '70'" in dry.output
    assert SalesforceStore(sandbox).count("Lead") == 0
    real = CliRunner().invoke(cli.main, args)
    assert real.exit_code == 0, real.output
    assert "2 written, 0 unchanged, 0 failed" in real.output
    assert SalesforceStore(sandbox).count("Lead") == 2
