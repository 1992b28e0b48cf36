"""Routing against the sandbox: one owner task (HubSpot or Salesforce) and one Slack mention per
lead and qualification."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
import requests

from pql.config import Routing, SalesforceTarget
from pql.crm import hubspot as crm
from pql.crm import routing
from pql.crm.salesforce import SalesforceCrm
from pql.http import HttpError
from pql.lake import Lake
from sandbox import slack
from sandbox.hubspot import HubSpotStore
from sandbox.salesforce import SalesforceStore

NOW = datetime(2026, 11, 2, 9, tzinfo=UTC)
BOTH = Routing(crm_task=True, slack=True)


def _scores(rows):
    return pd.DataFrame(
        [
            {
                "email": e,
                "score": s,
                "flag": s >= 50,
                "qualified_at": pd.Timestamp(q, tz="UTC") if q else pd.NaT,
                "reasons": "invited 4 teammates in 30 days",
                "model_version": "w-1",
            }
            for e, s, q in rows
        ]
    )


@pytest.fixture
def hs(sandbox):
    return crm.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)


@pytest.fixture
def webhook(sandbox):
    return requests.Session(), sandbox.base_url + slack.webhook_path(sandbox)


def _tasks(sandbox):
    """Each task's properties by the email of the contact it is associated with."""
    store = HubSpotStore(sandbox)
    emails = {c["id"]: c["properties"]["email"] for c in store.list("contacts")}
    out = {}
    for t in store.list("tasks"):
        (link,) = store.associations("tasks", t["id"], "contacts")
        assert 204 in link["type_ids"]
        out[emails[link["to_id"]]] = t["properties"]
    return out


def test_each_lead_is_routed_once_per_qualification(sandbox, hs, webhook, tmp_path):
    lake = Lake(tmp_path)
    HubSpotStore(sandbox).upsert(
        "contacts", [{"email": "ana@acme.io", "hubspot_owner_id": "77"}, {"email": "bo@beta.dev"}]
    )
    day1 = _scores(
        [
            ("ana@acme.io", 80, "2026-11-01"),
            ("bo@beta.dev", 20, None),
            ("cy@new.io", 70, "2026-11-01"),
        ]
    )
    first = routing.route(lake, BOTH, day1, crm=hs, slack=webhook, now=NOW)
    # cy@new.io is not in the CRM yet: Slack hears of it, its task waits for the sync to create it.
    assert first == {"crm_tasks": 1, "slack_leads": 2}
    tasks = _tasks(sandbox)
    assert set(tasks) == {"ana@acme.io"}
    assert tasks["ana@acme.io"]["hubspot_owner_id"] == "77"
    assert tasks["ana@acme.io"]["hs_task_subject"].startswith(
        "Product-qualified lead: follow up with ana@acme.io (score 80)"
    )
    assert "invited 4 teammates" in tasks["ana@acme.io"]["hs_task_body"]
    posted = slack.messages(sandbox)
    assert (
        len(posted) == 1 and "ana@acme.io" in posted[0]["text"] and "cy@new.io" in posted[0]["text"]
    )

    again = routing.route(lake, BOTH, day1, crm=hs, slack=webhook, now=NOW)
    assert again == {"crm_tasks": 0, "slack_leads": 0}  # nothing twice
    HubSpotStore(sandbox).upsert("contacts", [{"email": "cy@new.io"}])
    day2 = _scores(
        [
            ("ana@acme.io", 85, "2026-11-01"),
            ("bo@beta.dev", 60, "2026-11-02"),
            ("cy@new.io", 70, "2026-11-01"),
        ]
    )
    later = routing.route(lake, BOTH, day2, crm=hs, slack=webhook, now=NOW)
    assert later == {"crm_tasks": 2, "slack_leads": 1}  # bo newly qualified; cy's task now
    assert set(_tasks(sandbox)) == {"ana@acme.io", "bo@beta.dev", "cy@new.io"}
    assert len(slack.messages(sandbox)) == 2


def test_slack_rate_limit_is_retried_and_a_bad_webhook_is_named(sandbox, webhook, tmp_path):
    sandbox.queue_fault("slack", 429, count=2)
    only_slack = Routing(slack=True)
    got = routing.route(
        Lake(tmp_path), only_slack, _scores([("dee@acme.io", 90, "2026-11-01")]), slack=webhook
    )
    assert got == {"slack_leads": 1} and "dee@acme.io" in slack.messages(sandbox)[-1]["text"]
    wrong = (requests.Session(), sandbox.base_url + "/slack/services/T0/B0/nope")
    with pytest.raises(HttpError, match="Slack webhook answered 404: no_service"):
        routing.route(
            Lake(tmp_path / "x"), only_slack, _scores([("eve@acme.io", 90, "2026-11-01")]),
            slack=wrong,
        )  # fmt: skip


def test_routing_off_does_nothing(tmp_path):
    assert routing.route(Lake(tmp_path), Routing(), _scores([("a@b.io", 90, "2026-11-01")])) == {}


# --- Salesforce ---------------------------------------------------------------------------------

SF = SalesforceTarget(kind="salesforce")
TASK_ONLY = Routing(crm_task=True)


def _users(store, *names, active=True) -> list[str]:
    return store.create(
        "User",
        [{"Username": f"{n}@sales.test", "LastName": n, "Email": f"{n}@sales.test",
          "IsActive": active} for n in names],
    )  # fmt: skip


def _sf_tasks(store) -> list[dict]:
    return store.query(
        "SELECT Id, WhoId, WhatId, OwnerId, Subject, Description, ActivityDate, Status, Priority "
        "FROM Task ORDER BY Id"
    )


def test_salesforce_task_once_per_lead_and_qualification_on_the_owners_record(
    sandbox, sf_login, tmp_path
):
    store, lake = SalesforceStore(sandbox), Lake(tmp_path)
    ana_rep, kim_rep, kim_lead_rep, lee_rep = _users(store, "ana_rep", "kim_rep", "old", "lee_rep")
    [acme] = store.create("Account", [{"Name": "Acme"}])
    [ana, kim_contact] = store.create(
        "Contact",
        [
            {"LastName": "Ng", "Email": "ana@acme.io", "AccountId": acme, "OwnerId": ana_rep},
            {"LastName": "Kim", "Email": "kim.c@acme.io", "AccountId": acme, "OwnerId": kim_rep},
        ],
    )
    [ana_lead, kim_lead, lee] = store.create(
        "Lead",
        [
            {"LastName": "Ng", "Company": "Acme", "Email": "ana@acme.io"},  # the Contact wins
            {"LastName": "Kim", "Company": "Acme", "Email": "kim@acme.io", "OwnerId": kim_lead_rep},
            {"LastName": "Lee", "Company": "Beta", "Email": "lee@beta.dev", "OwnerId": lee_rep},
        ],
    )
    store.convert_lead(kim_lead, acme, kim_contact)
    day1 = _scores(
        [
            ("ana@acme.io", 80, "2026-11-01"),
            ("kim@acme.io", 75, "2026-11-01"),
            ("lee@beta.dev", 90, "2026-11-01"),
            ("bo@beta.dev", 20, None),  # not qualified
            ("cy@new.io", 70, "2026-11-01"),  # not in Salesforce yet
        ]
    )
    first = routing.route(lake, TASK_ONLY, day1, crm=SalesforceCrm(sf_login, SF), now=NOW)
    assert first == {"crm_tasks": 3}
    tasks = {t["WhoId"]: t for t in _sf_tasks(store)}
    assert set(tasks) == {ana, kim_contact, lee}  # a converted Lead's task is on its Contact
    assert ana_lead not in tasks and kim_lead not in tasks
    owners = {who: t["OwnerId"] for who, t in tasks.items()}
    assert owners == {ana: ana_rep, kim_contact: kim_rep, lee: lee_rep}
    assert (tasks[ana]["WhatId"], tasks[kim_contact]["WhatId"], tasks[lee]["WhatId"]) == (
        acme,
        acme,
        None,
    )
    t = tasks[ana]
    assert t["Subject"] == "Product-qualified lead: follow up with ana@acme.io (score 80)"
    assert t["Description"] == "PQL score 80: invited 4 teammates in 30 days"
    assert (t["ActivityDate"], t["Status"], t["Priority"]) == ("2026-11-03", "Not Started", "High")
    done = routing.ledger(lake).done.set_index("email")
    assert done.loc["ana@acme.io", "detail"] == t["Id"]  # the task's id, per lead

    again = routing.route(lake, TASK_ONLY, day1, crm=SalesforceCrm(sf_login, SF), now=NOW)
    assert again == {"crm_tasks": 0} and store.count("Task") == 3

    [cy] = store.create("Lead", [{"LastName": "Cy", "Company": "New", "Email": "cy@new.io"}])
    day2 = _scores(
        [
            ("ana@acme.io", 85, "2026-11-02"),  # qualified again, later
            ("kim@acme.io", 75, "2026-11-01"),
            ("lee@beta.dev", 90, "2026-11-01"),
            ("cy@new.io", 70, "2026-11-01"),
        ]
    )
    later = routing.route(lake, TASK_ONLY, day2, crm=SalesforceCrm(sf_login, SF), now=NOW)
    assert later == {"crm_tasks": 2}
    whos = [t["WhoId"] for t in _sf_tasks(store)]
    assert sorted(whos) == sorted([ana, kim_contact, lee, ana, cy])


def test_a_refused_salesforce_task_is_retried_next_run(sandbox, sf_login, tmp_path):
    store, lake = SalesforceStore(sandbox), Lake(tmp_path)
    rep, gone = _users(store, "rep", "gone")
    [ok, orphan] = store.create(
        "Lead",
        [
            {"LastName": "Ok", "Company": "Acme", "Email": "ok@acme.io", "OwnerId": rep},
            {"LastName": "Or", "Company": "Acme", "Email": "or@acme.io", "OwnerId": gone},
        ],
    )
    store.update("User", gone, {"IsActive": False})  # the rep left; the Lead was not reassigned
    scores = _scores([("ok@acme.io", 80, "2026-11-01"), ("or@acme.io", 80, "2026-11-01")])
    sandbox.queue_fault("salesforce_lock", 400, count=1)  # transient: retried within the run
    first = routing.route(lake, TASK_ONLY, scores, crm=SalesforceCrm(sf_login, SF), now=NOW)
    assert first == {"crm_tasks": 1}
    assert [t["WhoId"] for t in _sf_tasks(store)] == [ok]
    assert set(routing.ledger(lake).done["email"]) == {"ok@acme.io"}  # the refused one is not kept
    assert routing.route(lake, TASK_ONLY, scores, crm=SalesforceCrm(sf_login, SF), now=NOW) == {
        "crm_tasks": 0
    }
    store.update("Lead", orphan, {"OwnerId": rep})  # reassigned: next run routes it
    third = routing.route(lake, TASK_ONLY, scores, crm=SalesforceCrm(sf_login, SF), now=NOW)
    assert third == {"crm_tasks": 1}
    tasks = _sf_tasks(store)
    assert [(t["WhoId"], t["OwnerId"]) for t in tasks] == [(ok, rep), (orphan, rep)]


def test_a_failure_after_some_salesforce_tasks_keeps_them_in_the_ledger(
    sandbox, sf_login, tmp_path
):
    store, lake = SalesforceStore(sandbox), Lake(tmp_path)
    store.create("Lead", [{"LastName": "A", "Company": "Acme", "Email": "a@acme.io"}])
    scores = _scores([("a@acme.io", 80, "2026-11-01")])
    both = Routing(crm_task=True, slack=True)
    wrong = (requests.Session(), sandbox.base_url + "/slack/services/T0/B0/nope")
    with pytest.raises(HttpError, match="Slack webhook answered 404"):
        routing.route(lake, both, scores, crm=SalesforceCrm(sf_login, SF), slack=wrong, now=NOW)
    # The Airflow retry must not create the task again.
    assert set(routing.ledger(lake).done["channel"]) == {"crm_task"}
    assert routing.route(lake, TASK_ONLY, scores, crm=SalesforceCrm(sf_login, SF), now=NOW) == {
        "crm_tasks": 0
    }
    assert store.count("Task") == 1


def test_jobs_route_goes_to_salesforce_through_the_hook_and_relogs_in(
    sandbox, tmp_path, monkeypatch
):
    from datetime import date

    from pql import config, pipeline
    from pql_airflow.hooks import CrmHook
    from sandbox.salesforce import connection_env

    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    cfg = config.load().model_copy(
        update={"lake": config.LakeSettings(root=tmp_path), "crm": SF, "routing": TASK_ONLY}
    )
    day = date(2026, 11, 1)
    folder = Lake(tmp_path).scores(day)
    folder.mkdir(parents=True)
    _scores([("ana@acme.io", 80, "2026-11-01")]).to_parquet(folder / "scores.parquet")
    store = SalesforceStore(sandbox)
    [lead] = store.create("Lead", [{"LastName": "Ng", "Company": "Acme", "Email": "ana@acme.io"}])
    crm = CrmHook(cfg).get_conn()
    crm(lambda sf: sf.query("SELECT Id FROM Lead LIMIT 1"))  # logged in
    store.expire_sessions()  # e.g. a long sync before: the route logs in again
    assert pipeline.route(cfg, day, crm) == {"crm_tasks": 1}
    [task] = _sf_tasks(store)
    assert task["WhoId"] == lead
