"""Routing against the sandbox: one owner task and one Slack mention per lead and qualification."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
import requests

from pql import routing
from pql.config import Routing
from pql.crm import hubspot as crm
from pql.lake import Lake
from sandbox import slack
from sandbox.hubspot import HubSpotStore

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
    first = routing.route(lake, BOTH, day1, hs=hs, slack=webhook, now=NOW)
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

    again = routing.route(lake, BOTH, day1, hs=hs, slack=webhook, now=NOW)
    assert again == {"crm_tasks": 0, "slack_leads": 0}  # nothing twice
    HubSpotStore(sandbox).upsert("contacts", [{"email": "cy@new.io"}])
    day2 = _scores(
        [
            ("ana@acme.io", 85, "2026-11-01"),
            ("bo@beta.dev", 60, "2026-11-02"),
            ("cy@new.io", 70, "2026-11-01"),
        ]
    )
    later = routing.route(lake, BOTH, day2, hs=hs, slack=webhook, now=NOW)
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
    with pytest.raises(RuntimeError, match="Slack webhook answered 404: no_service"):
        routing.route(
            Lake(tmp_path / "x"), only_slack, _scores([("eve@acme.io", 90, "2026-11-01")]),
            slack=wrong,
        )  # fmt: skip


def test_routing_off_does_nothing(tmp_path):
    assert routing.route(Lake(tmp_path), Routing(), _scores([("a@b.io", 90, "2026-11-01")])) == {}
