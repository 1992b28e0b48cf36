"""Outcomes pulled from the CRM emulators (real SDKs over loopback): Salesforce Events, won
Opportunities (contact roles, Lead conversion) and Tasks; the incremental store on both CRMs;
completed tasks as the first sales touch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd

from pql.crm import hubspot as crm_hubspot
from pql.crm import hubspot_outcomes, salesforce_outcomes
from pql.http import Budget
from pql.lake import Lake
from pql.report import health, outcomes
from sandbox import seed, world
from sandbox.hubspot import HubSpotStore
from sandbox.salesforce import SalesforceStore

SPEC = world.WorldSpec(seed=11, start=date.today() - timedelta(days=61), days=60, users=600,
                       accounts=80)  # fmt: skip


def _hubspot(sandbox):
    hs = crm_hubspot.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)
    hs.budgets["search"] = Budget([(1000, 1.0)])  # the sandbox's limits are raised too
    return hs


def _calls(sandbox, prefix: str) -> int:
    return sum(v for k, v in sandbox.counters.items() if k.startswith(prefix))


def _same(a: dict, b: dict) -> None:
    for kind in outcomes.KINDS:
        pd.testing.assert_frame_equal(a[kind], b[kind], check_like=True)


# ---------------------------------------------------------------- Salesforce


def test_salesforce_pull_events_wins_by_role_and_conversion_and_closed_tasks(sandbox, sf_login):
    store = SalesforceStore(sandbox)
    t0 = datetime(2026, 10, 5, 9, tzinfo=UTC)
    [acme] = store.create("Account", [{"Name": "Acme"}])
    [ana] = store.create("Contact", [{"LastName": "Ng", "Email": "Ana@Acme.io", "AccountId": acme}])
    [kim_lead, lee_lead] = store.create("Lead", [
        {"LastName": "Kim", "Company": "Acme", "Email": "kim@acme.io"},
        {"LastName": "Lee", "Company": "Acme", "Email": "lee@acme.io"},
    ])  # fmt: skip

    def event(who, start, **more):
        return {"Subject": "Intro", "WhoId": who, "StartDateTime": start.isoformat(),
                "DurationInMinutes": 30, **more}  # fmt: skip

    kim_event, lee_event, ana_event, gone, nobody, all_day = store.create("Event", [
        event(kim_lead, t0),
        event(lee_lead, t0 + timedelta(days=1)),
        event(ana, t0 + timedelta(days=2)),
        event(ana, t0 + timedelta(days=3)),
        event(None, t0 + timedelta(days=4)),
        {"Subject": "Workshop", "WhoId": ana, "IsAllDayEvent": True, "ActivityDate": "2026-10-12",
         "DurationInMinutes": 1440},
    ])  # fmt: skip
    by_role, by_conversion, still_open = store.create("Opportunity", [
        {"Name": "Acme seats", "AccountId": acme, "StageName": "Closed Won",
         "CloseDate": "2026-10-20", "Amount": 12000},
        {"Name": "Kim's team", "AccountId": acme, "StageName": "Closed Won",
         "CloseDate": "2026-10-22", "Amount": 4800},
        {"Name": "Acme upsell", "AccountId": acme, "StageName": "Qualification",
         "CloseDate": "2026-12-01", "Amount": 9000},
    ])  # fmt: skip
    store.create("OpportunityContactRole", [
        {"OpportunityId": by_role, "ContactId": ana, "Role": "Decision Maker", "IsPrimary": True},
        {"OpportunityId": still_open, "ContactId": ana},
    ])  # fmt: skip
    [kim] = store.create("Contact", [{"LastName": "Kim", "Email": "kim@acme.io",
                                      "AccountId": acme}])  # fmt: skip
    store.convert_lead(kim_lead, acme, kim, by_conversion)
    done, open_task = store.create("Task", [
        {"Subject": "Call", "WhoId": ana, "Status": "Completed", "TaskSubtype": "Call",
         "CompletedDateTime": (t0 - timedelta(hours=3)).isoformat()},
        {"Subject": "Follow up", "WhoId": lee_lead, "Status": "Not Started"},
    ])  # fmt: skip
    sf = sf_login()
    sf.Event.delete(gone)

    got = salesforce_outcomes.pull(sf, None)
    m = got["meetings"].rows.set_index("meeting_id")
    # The converted Lead's Event moved to its Contact; the open Lead keeps its own.
    [moved] = sf.query(f"SELECT WhoId FROM Event WHERE Id = '{kim_event}'")["records"]
    assert moved["WhoId"] == kim
    assert m.loc[kim_event, "email"] == "kim@acme.io" and m.loc[lee_event, "email"] == "lee@acme.io"
    assert m.loc[ana_event, "email"] == "ana@acme.io"
    assert m.loc[ana_event, "meeting_at"] == pd.Timestamp(t0 + timedelta(days=2))
    assert m.loc[all_day, "meeting_at"] == pd.Timestamp("2026-10-12", tz="UTC")
    assert gone not in m.index and nobody not in m.index and len(m) == 4
    w = got["won"].rows.set_index("deal_id")
    assert sorted(w.index) == sorted([by_role, by_conversion])
    assert tuple(w.loc[by_role, ["email", "amount"]]) == ("ana@acme.io", 12000.0)
    assert tuple(w.loc[by_conversion, ["email", "amount"]]) == ("kim@acme.io", 4800.0)
    assert w.loc[by_conversion, "won_at"] == pd.Timestamp("2026-10-22", tz="UTC")  # CloseDate
    t = got["tasks"].rows
    assert list(t["task_id"]) == [done]
    assert t["task_at"].iloc[0] == pd.Timestamp(t0 - timedelta(hours=3))
    assert open_task not in set(t["task_id"])


def test_salesforce_incremental_pull_asks_only_for_changes(sandbox, sf_login, tmp_path):
    seed.crms_only(sandbox, SPEC, ("salesforce",))
    store, sf = SalesforceStore(sandbox), sf_login()
    lake = Lake(tmp_path / "lake")

    def pull(since):
        return salesforce_outcomes.pull(sf, since, login=sf_login)

    first, stats = outcomes.refresh(lake, "salesforce", pull, margin=timedelta(0))
    assert stats["pull"] == "full" and len(first["meetings"]) > 20 and len(first["won"]) > 5
    opps = store.query("SELECT Id, IsWon FROM Opportunity")
    unwin = next(o["Id"] for o in opps if o["IsWon"])
    win = next(o["Id"] for o in opps if not o["IsWon"])
    store.update("Opportunity", unwin, {"StageName": "Closed Lost"})
    store.update("Opportunity", win, {"StageName": "Closed Won", "CloseDate": "2026-11-02"})
    open_lead = store.query("SELECT Id, Email FROM Lead WHERE IsConverted = false LIMIT 1")[0]
    store.create("Event", [{"Subject": "Demo", "WhoId": open_lead["Id"], "DurationInMinutes": 30,
                            "StartDateTime": datetime.now(UTC).isoformat()}])  # fmt: skip
    store.create("Task", [{"Subject": "Call", "WhoId": open_lead["Id"], "Status": "Completed"}])
    sf.Event.delete(first["meetings"]["meeting_id"].iloc[0])

    before = _calls(sandbox, "salesforce.query")
    second, stats = outcomes.refresh(lake, "salesforce", pull, margin=timedelta(0))
    calls = _calls(sandbox, "salesforce.query") - before
    print("Salesforce incremental pull:", calls, "queries")
    # Only the changed records came back: 2 Events (new, deleted), 2 Opportunities, 1 Task.
    assert stats["pull"] == "incremental"
    assert (stats["meetings_pulled"], stats["won_pulled"], stats["tasks_pulled"]) == (2, 2, 1)
    assert calls <= 8  # Events, Opportunities, roles and Leads changed, Tasks; people of wins
    assert len(second["meetings"]) == len(first["meetings"])  # one new, one deleted
    assert unwin not in set(second["won"]["deal_id"]) and win in set(second["won"]["deal_id"])
    assert open_lead["Email"].lower() in set(second["tasks"]["email"])
    full, _ = outcomes.refresh(Lake(tmp_path / "full"), "salesforce", pull)
    _same(second, full)


# ---------------------------------------------------------------- HubSpot


def test_hubspot_incremental_pull_asks_only_for_changes(sandbox, tmp_path):
    seed.crms_only(sandbox, SPEC, ("hubspot",))
    store, hs = HubSpotStore(sandbox), _hubspot(sandbox)
    contacts = store.list("contacts", ["email"])
    ana, bo = contacts[0], contacts[1]
    tasks = store.create("tasks", [
        {"hs_timestamp": "2026-10-05T10:00:00Z", "hs_task_subject": "Call",
         "hs_task_status": "COMPLETED", "hs_task_completion_date": "2026-10-05T10:30:00Z"},
        {"hs_timestamp": "2026-10-06T10:00:00Z", "hs_task_subject": "Follow up",
         "hs_task_status": "NOT_STARTED"},
    ])  # fmt: skip
    store.associate_many("tasks", "contacts", [(tasks[0], ana["id"]), (tasks[1], bo["id"])])
    lake = Lake(tmp_path / "lake")

    def pull(since):
        return hubspot_outcomes.pull(hs, since)

    first, stats = outcomes.refresh(lake, "hubspot", pull, margin=timedelta(0))
    assert stats["pull"] == "full" and len(first["meetings"]) > 20 and len(first["won"]) > 5
    assert list(first["tasks"]["email"]) == [ana["properties"]["email"]]
    assert first["tasks"]["task_at"].iloc[0] == pd.Timestamp("2026-10-05T10:30:00Z")

    deals = store.list("deals", ["dealstage"])
    unwin = next(d["id"] for d in deals if d["properties"]["dealstage"] == "closedwon")
    win = next(d["id"] for d in deals if d["properties"]["dealstage"] != "closedwon")
    with store.transaction() as tx:
        for rid, stage in ((unwin, "closedlost"), (win, "closedwon")):
            tx.update(tx.fetch("deals", [int(rid)])[int(rid)], {"dealstage": stage})
        task = tx.fetch("tasks", [int(tasks[1])])[int(tasks[1])]
        tx.update(task, {"hs_task_status": "COMPLETED"})
    [new] = store.create("meetings", [{"hs_timestamp": "2026-11-02T15:00:00Z"}])
    store.associate("meetings", new, "contacts", bo["id"])

    before = dict(sandbox.counters)
    second, stats = outcomes.refresh(lake, "hubspot", pull, margin=timedelta(0))
    calls = {k: v - before.get(k, 0) for k, v in sandbox.counters.items() if v != before.get(k, 0)}
    assert (stats["meetings_pulled"], stats["won_pulled"], stats["tasks_pulled"]) == (1, 2, 1)
    searches = sum(v for k, v in calls.items() if k.endswith("/search"))
    print("HubSpot incremental pull:", calls)
    assert searches == 3 and sum(calls.values()) <= 7, calls  # + associations, contact emails
    assert unwin not in set(second["won"]["deal_id"]) and win in set(second["won"]["deal_id"])
    assert new in set(second["meetings"]["meeting_id"])
    assert sorted(second["tasks"]["email"]) == sorted(
        [ana["properties"]["email"], bo["properties"]["email"]]
    )
    full, _ = outcomes.refresh(Lake(tmp_path / "full"), "hubspot", pull)
    _same(second, full)

    # A full pull comes round again once the last one is older than full_every.
    asked = []
    later = datetime.now(UTC) + timedelta(days=30)
    outcomes.refresh(lake, "hubspot", lambda since: asked.append(since) or {}, now=later,
                     full_every=timedelta(days=28))  # fmt: skip
    assert asked == [None]


# ---------------------------------------------------------------- first touch


def test_completed_tasks_set_the_first_touch_and_the_health_check_reads_it():
    t0 = pd.Timestamp("2026-09-07 09:00", tz="UTC")
    users = pd.DataFrame({
        "email": ["a@x.io", "b@x.io", "c@x.io"],
        "first_seen": [t0 - pd.Timedelta(days=3)] * 3,
        "qualified_at": [t0, t0, t0],
        "score": [90, 90, 90],
    })  # fmt: skip
    meetings = pd.DataFrame({"meeting_id": ["m1", "m2"], "email": ["a@x.io", "b@x.io"],
                             "meeting_at": [t0 + pd.Timedelta(hours=5)] * 2})  # fmt: skip
    tasks = pd.DataFrame({
        "task_id": ["t0", "t1", "t2"],
        "email": ["a@x.io", "a@x.io", "c@x.io"],
        # before qualifying (does not count), half an hour after, two days after
        "task_at": [t0 - pd.Timedelta(hours=1), t0 + pd.Timedelta(minutes=30),
                    t0 + pd.Timedelta(days=2)],
    })  # fmt: skip
    won = pd.DataFrame(columns=["deal_id", "email", "won_at", "amount"])
    until = t0 + pd.Timedelta(days=7)
    per_user = outcomes.attribute(users, meetings, won, 90, tasks=tasks, until=until)
    per_user = per_user.set_index("email")
    assert per_user.loc["a@x.io", "first_touch_at"] == t0 + pd.Timedelta(minutes=30)
    assert per_user.loc["b@x.io", "first_touch_at"] == t0 + pd.Timedelta(hours=5)
    assert per_user.loc["c@x.io", "first_touch_at"] == t0 + pd.Timedelta(days=2)
    assert "first_touch_at" not in outcomes.attribute(users, meetings, won, 90, until=until)
    got = {c["check"]: c for c in health.checks(per_user.reset_index(), users, until=until,
                                                 window_days=90, min_conversions=3)}  # fmt: skip
    touch = got["median hours from qualifying to first sales touch (meeting or task)"]
    assert (touch["value"], touch["n"], touch["status"]) == (5.0, 3, "warn")  # of 0.5, 5, 48 h
    none = outcomes.attribute(users, meetings.iloc[:0], won, 90, tasks=tasks.iloc[:0],
                              until=until)  # fmt: skip
    assert none["first_touch_at"].isna().all()


def test_a_salesforce_meeting_outcome_field_leaves_cancelled_events_out(sandbox, sf_login):
    """Events carry no outcome in a standard org; a custom field named in config does."""
    import json

    from sandbox.salesforce_store import DEFAULT_CUSTOM_FIELDS

    custom = json.loads(json.dumps(DEFAULT_CUSTOM_FIELDS))
    custom["Event"] = {"Meeting_Outcome__c": {"type": "string", "length": 40,
                                              "label": "Meeting outcome"}}  # fmt: skip
    sandbox.settings["salesforce_custom_fields"] = custom
    store = SalesforceStore(sandbox)
    [lead] = store.create("Lead", [{"LastName": "Kim", "Company": "Acme", "Email": "kim@acme.io"}])
    t0 = datetime(2026, 10, 5, 9, tzinfo=UTC)
    held, cancelled = store.create("Event", [
        {"Subject": "Intro", "WhoId": lead, "StartDateTime": (t0 + timedelta(days=2)).isoformat(),
         "DurationInMinutes": 30, "Meeting_Outcome__c": "Completed"},
        {"Subject": "Intro", "WhoId": lead, "StartDateTime": t0.isoformat(),
         "DurationInMinutes": 30, "Meeting_Outcome__c": "Canceled"},
    ])  # fmt: skip
    got = salesforce_outcomes.pull(sf_login(), None, outcome_field="Meeting_Outcome__c")
    rows = got["meetings"].rows.set_index("meeting_id")
    assert (rows.loc[held, "outcome"], rows.loc[cancelled, "outcome"]) == ("Completed", "Canceled")
    users = pd.DataFrame({"email": ["kim@acme.io"], "first_seen": [t0 - timedelta(days=1)],
                          "qualified_at": [t0 - timedelta(hours=1)]})  # fmt: skip
    store_rows = outcomes._typed(got["meetings"].rows, "meetings")
    no_wins = pd.DataFrame(columns=["deal_id", "email", "won_at", "amount"])
    per_user = outcomes.attribute(users, store_rows, no_wins, 30, until=t0 + timedelta(days=40))
    assert per_user["meeting_at"].iloc[0] == pd.Timestamp(t0 + timedelta(days=2))  # not the 1st
