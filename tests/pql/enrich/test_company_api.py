"""The enrichment API client end to end against the sandbox: cache, TTL, budget, retries, errors."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from pql import config, http, pipeline
from pql.enrich import company_api, firmographics
from pql.events.canonical import SCHEMA
from pql.lake import Lake
from sandbox import enrichment, seed, world

SPEC = world.WorldSpec(seed=7, start=date(2025, 3, 1), days=3, users=30, accounts=10)
NOW = datetime(2026, 1, 15, tzinfo=UTC)
UNKNOWN = ["unknown-co.com", "gmail.com"]


@pytest.fixture
def accounts(sandbox) -> list[world.Account]:
    sandbox.settings["enrichment_rps"] = 1000
    seed.build(sandbox, SPEC)
    return world.accounts(SPEC)


@pytest.fixture
def api(sandbox) -> tuple[requests.Session, str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {sandbox.credentials['enrichment']['api_key']}"
    return session, f"{sandbox.base_url}/enrichment"


class Sleeps(list):
    """Records the waits asked for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetch(api, domains, lake, **kwargs):
    args = {"ttl_days": 30, "requests_per_second": 500, "max_requests": 100, "now": NOW}
    return company_api.fetch(*api, domains, lake, **{**args, **kwargs})


def asked(sandbox) -> int:
    return sandbox.counters["enrichment"]


def test_fetch_maps_answers_and_fills_the_cache(sandbox, accounts, api, tmp_path):
    lake = Lake(tmp_path)
    domains = [a.domain for a in accounts[:4]]
    got = fetch(api, [d.upper() for d in domains] + UNKNOWN + [None], lake)
    assert asked(sandbox) == 6
    assert list(got.columns) == firmographics.COLUMNS
    assert sorted(got["domain"]) == sorted(domains)
    row = got.set_index("domain").loc[accounts[0].domain]
    assert row["employees"] == accounts[0].employees and got["employees"].dtype == "Int64"
    assert (row["industry"], row["country"]) == (accounts[0].industry, accounts[0].country)
    assert row["revenue_band"] == enrichment.revenue_band(accounts[0].employees)
    assert got["plan"].isna().all()
    assert got.attrs["enrichment"] == {
        "requested": 6, "found": 4, "not_found": 2, "pending": 0, "left": 0, "cached": 0,
    }  # fmt: skip

    cache = company_api.read_cache(lake)
    assert company_api.cache_path(lake) == tmp_path / "enrichment" / "cache" / "companies.parquet"
    assert len(cache) == 6 and set(cache["fetched_at"]) == {NOW}
    assert set(cache.loc[~cache["found"], "domain"]) == set(UNKNOWN)  # 404s are cached too
    assert not list(company_api.cache_path(lake).parent.glob(".tmp-*"))
    firmographics.write(lake, got)
    assert len(firmographics.read(lake)) == 4


def test_within_ttl_nothing_is_asked_and_after_it_everything_is(sandbox, accounts, api, tmp_path):
    lake = Lake(tmp_path)
    domains = [a.domain for a in accounts[:3]] + UNKNOWN
    first = fetch(api, domains, lake)
    again = fetch(api, domains, lake, now=NOW + timedelta(days=29))
    assert asked(sandbox) == 5  # the second call, found or not found, came from the cache
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs["enrichment"]["cached"] == 5
    later = NOW + timedelta(days=31)
    fetch(api, domains, lake, now=later)
    assert asked(sandbox) == 10
    assert set(company_api.read_cache(lake)["fetched_at"]) == {later}


def test_max_requests_leaves_the_rest_for_the_next_run(sandbox, accounts, api, tmp_path, caplog):
    lake = Lake(tmp_path)
    domains = sorted(a.domain for a in accounts)
    with caplog.at_level(logging.INFO, logger="pql.enrich.company_api"):
        first = fetch(api, domains, lake, max_requests=4)
    assert asked(sandbox) == 4 and len(first) == 4
    assert first.attrs["enrichment"]["left"] == 6
    assert "6 left for the next run" in caplog.text
    second = fetch(api, domains, lake, max_requests=4)
    assert asked(sandbox) == 8 and len(second) == 8
    third = fetch(api, domains, lake, max_requests=4)
    assert asked(sandbox) == 10 and sorted(third["domain"]) == domains
    assert third.attrs["enrichment"]["left"] == 0


def test_expired_entries_not_refreshed_are_still_used(sandbox, accounts, api, tmp_path):
    lake = Lake(tmp_path)
    domains = sorted(a.domain for a in accounts[:4])
    fetch(api, domains, lake)
    stale = fetch(api, domains, lake, now=NOW + timedelta(days=60), max_requests=1)
    assert asked(sandbox) == 5 and sorted(stale["domain"]) == domains


def test_requests_are_paced(sandbox, accounts, api, tmp_path):
    start = datetime.now(UTC)
    fetch(api, [a.domain for a in accounts[:5]], Lake(tmp_path), requests_per_second=20)
    assert (datetime.now(UTC) - start).total_seconds() >= 4 / 20


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_server_errors_are_retried(sandbox, accounts, api, tmp_path, status):
    sandbox.queue_fault("enrichment", status, count=2)
    sleeps = Sleeps()
    got = fetch(api, [accounts[0].domain], Lake(tmp_path), sleep=sleeps)
    assert list(got["domain"]) == [accounts[0].domain]
    assert sandbox.counters[f"enrichment.{status}"] == 2 and asked(sandbox) == 3
    retries = [s for s in sleeps if s >= 0.5]
    # Retry-After: 1 is honoured on a 429; a 503 has none, so the backoff is exponential.
    assert retries == ([1.0, 1.0] if status == 429 else [2.0, 4.0])


def test_the_server_rate_limit_is_retried(sandbox, accounts, api, tmp_path):
    sandbox.settings["enrichment_rps"] = 2
    domains = [a.domain for a in accounts[:5]]
    got = fetch(api, domains, Lake(tmp_path), requests_per_second=1000)
    assert sorted(got["domain"]) == sorted(domains)
    assert sandbox.counters["enrichment.429"] >= 1


def test_bad_key_is_a_clear_error_naming_the_connection(sandbox, accounts, api, tmp_path):
    session, base_url = api
    session.headers["Authorization"] = "Bearer sk_wrong"
    cid = "enrichment_prod"
    with pytest.raises(http.CredentialsError, match="'enrichment_prod'.*401"):
        fetch((session, base_url), [accounts[0].domain], Lake(tmp_path), connection_id=cid)
    assert asked(sandbox) == 1  # not retried


def test_answers_are_kept_when_a_run_fails_half_way(sandbox, accounts, api, tmp_path):
    lake = Lake(tmp_path)
    domains = sorted(a.domain for a in accounts[:3])
    fetch(api, domains[:2], lake)
    sandbox.queue_fault("enrichment", 500, count=company_api.ATTEMPTS)
    with pytest.raises(http.HttpError, match="answered 500"):
        fetch(api, domains, lake, now=NOW + timedelta(days=40), sleep=Sleeps())
    assert set(company_api.read_cache(lake)["domain"]) == set(domains[:2])
    fetch(api, ["gmail.com", domains[2]], lake, now=NOW + timedelta(days=40))
    assert len(company_api.read_cache(lake)) == 4


def _events(lake: Lake, rows: list[dict]) -> None:
    out = lake.events("mixpanel", date(2025, 3, 2))
    out.mkdir(parents=True)
    ts = datetime(2025, 3, 2, 9, tzinfo=UTC)
    full = [
        {n: None for n in SCHEMA.names} | {"source": "mixpanel", "event_id": str(i), "ts": ts} | r
        for i, r in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), out / "part-0.parquet")


def test_refresh_accounts_asks_for_work_domains_of_identified_users(
    sandbox, accounts, api, tmp_path
):
    cfg = config.load().model_copy(update={"lake": config.LakeSettings(root=tmp_path)})
    cfg = cfg.model_copy(
        update={"enrichment": config.Enrichment(provider="api", requests_per_second=100)}
    )
    lake = Lake(tmp_path)
    _events(
        lake,
        [
            {"user_key": "u1", "email": f"ana@{accounts[0].domain.upper()}"},
            {"user_key": "u2", "email": f"bo@{accounts[0].domain}"},
            {"user_key": "u3", "email": "cy@gmail.com"},  # free mail: never asked
            {"user_key": "u4", "email": None, "account_key": accounts[1].domain},
            {"user_key": "u5", "email": None, "account_key": "acct_00042"},  # not a domain
            {"user_key": "$device:d1", "email": f"x@{accounts[2].domain}"},  # not identified
            {"user_key": "u6", "email": "someone@unknown-co.com"},
        ],
    )
    assert pipeline.company_domains(lake, cfg.identity.free_email_domains) == sorted(
        [accounts[0].domain, accounts[1].domain, "unknown-co.com"]
    )
    result = pipeline.refresh_accounts(cfg, None, api)
    assert (result["accounts"], result["requested"], result["not_found"]) == (2, 3, 1)
    assert sorted(firmographics.read(lake)["domain"]) == sorted(
        [accounts[0].domain, accounts[1].domain]
    )
    with pytest.raises(ValueError, match="provider 'api'"):
        pipeline.refresh_accounts(cfg, None)
