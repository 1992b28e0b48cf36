"""Conformance of the enrichment emulator (Clearbit-style company lookup), through `requests` and
the pipeline's EnrichmentHook against a small seeded world."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest
import requests

from pql_airflow.hooks import EnrichmentHook
from sandbox import enrichment, seed, world
from sandbox.server import connection_env
from sandbox.state import SandboxState

SPEC = world.WorldSpec(seed=11, start=date(2025, 3, 1), days=3, users=30, accounts=12)
FIND = "/enrichment/v2/companies/find"


@pytest.fixture
def seeded(sandbox) -> list[world.Account]:
    seed.build(sandbox, SPEC)
    return world.accounts(SPEC)


@pytest.fixture
def key(sandbox) -> str:
    return sandbox.credentials["enrichment"]["api_key"]


def find(sandbox, domain: str | None, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    params = {"domain": domain} if domain is not None else {}
    return requests.get(f"{sandbox.base_url}{FIND}", params=params, headers=headers, timeout=10)


def test_found_company_has_the_world_firmographics(sandbox, seeded, key):
    acct = max(seeded, key=lambda a: a.employees)
    resp = find(sandbox, acct.domain.upper(), key)  # domains are case-insensitive
    assert resp.status_code == 200
    body = resp.json()
    assert body["domain"] == acct.domain and body["name"] == acct.name
    assert body["metrics"]["employees"] == acct.employees
    assert body["metrics"]["estimatedAnnualRevenue"] == enrichment.revenue_band(acct.employees)
    assert body["category"] == {"industry": acct.industry}
    assert body["geo"] == {"countryCode": acct.country}
    assert find(sandbox, f"www.{acct.domain}", key).json()["domain"] == acct.domain


def test_revenue_band_follows_head_count():
    assert enrichment.revenue_band(3) == "$0-$1M"
    assert enrichment.revenue_band(7) == "$1M-$10M"
    assert enrichment.revenue_band(300) == "$10M-$50M"
    assert enrichment.revenue_band(50_000) == "$1B-$10B"
    assert enrichment.revenue_band(10**6) == "$10B+"


@pytest.mark.parametrize("domain", ["unknown-company.com", "gmail.com", "outlook.com"])
def test_unknown_and_free_mail_domains_are_404(sandbox, seeded, key, domain):
    resp = find(sandbox, domain, key)
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "unknown_record"


def test_unseeded_sandbox_knows_no_company(sandbox, key):
    assert find(sandbox, "acme.com", key).status_code == 404


@pytest.mark.parametrize("bad", [None, "sk_wrong"])
def test_missing_or_wrong_key_is_401(sandbox, seeded, bad):
    resp = find(sandbox, seeded[0].domain, bad)
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "auth_required"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("domain", [None, "", "not a domain", "acme", "a@b.com"])
def test_missing_or_invalid_domain_is_422(sandbox, key, domain):
    resp = find(sandbox, domain, key)
    assert resp.status_code == 422
    assert resp.json()["error"]["type"] == "invalid_params"


def test_rate_limit_answers_429_with_retry_after(sandbox, seeded, key):
    sandbox.settings["enrichment_rps"] = 3
    statuses = [find(sandbox, seeded[0].domain, key).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    resp = find(sandbox, seeded[0].domain, key)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    assert resp.json()["error"]["type"] == "rate_limit"


@pytest.mark.parametrize("status", [429, 503])
def test_queued_faults_are_answered_once(sandbox, seeded, key, status):
    sandbox.queue_fault("enrichment", status)
    first = find(sandbox, seeded[0].domain, key)
    assert first.status_code == status
    if status == 429:
        assert first.headers["Retry-After"] == "1"
    assert find(sandbox, seeded[0].domain, key).status_code == 200


def test_requests_are_counted(sandbox, seeded, key):
    find(sandbox, seeded[0].domain, key)
    find(sandbox, "gmail.com", key)
    find(sandbox, "gmail.com", "sk_wrong")
    assert sandbox.counters["enrichment"] == 3
    assert (sandbox.counters["enrichment.200"], sandbox.counters["enrichment.404"]) == (1, 1)
    over_http = requests.get(f"{sandbox.base_url}/_sandbox/counters", timeout=5).json()
    assert over_http["enrichment.401"] == 1


def test_key_is_made_once_and_kept(sandbox, key):
    assert re.fullmatch(r"sk_[0-9a-f]{32}", key)
    stored = json.loads((sandbox.root / "credentials.json").read_text())
    assert stored["enrichment"] == {"api_key": key}
    assert enrichment.credentials(SandboxState.open(sandbox.root)) == {"api_key": key}


def test_older_sandbox_gains_a_key(tmp_path):
    state = SandboxState.open(tmp_path)
    stored = json.loads((tmp_path / "credentials.json").read_text())
    del stored["enrichment"]
    (tmp_path / "credentials.json").write_text(json.dumps(stored))
    state = SandboxState.open(tmp_path)
    made = enrichment.credentials(state)
    assert json.loads((tmp_path / "credentials.json").read_text())["enrichment"] == made
    assert {"mixpanel", "hubspot"} <= set(stored)


def test_hook_uses_the_sandbox_connection(sandbox, seeded, monkeypatch):
    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    session, base_url = EnrichmentHook().get_conn()
    assert base_url == f"{sandbox.base_url}/enrichment"
    resp = session.get(f"{base_url}/v2/companies/find", params={"domain": seeded[1].domain})
    assert resp.status_code == 200 and resp.json()["domain"] == seeded[1].domain
    got = session.get(f"{base_url}/v2/companies/find", params={"domain": "gmail.com"})
    assert got.status_code == 404


def test_hook_without_host_leaves_the_vendor_default(sandbox, monkeypatch):
    conn = {"conn_type": "http", "password": "sk_x"}
    monkeypatch.setenv("AIRFLOW_CONN_ENRICHMENT_TEST", json.dumps(conn))
    session, base_url = EnrichmentHook("enrichment_test").get_conn()
    assert base_url is None and session.headers["Authorization"] == "Bearer sk_x"


def test_hook_without_key_says_where_to_put_it(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ENRICHMENT_TEST", json.dumps({"conn_type": "http"}))
    with pytest.raises(ValueError, match="enrichment_test.*API key"):
        EnrichmentHook("enrichment_test").get_conn()
