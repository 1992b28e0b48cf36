"""Firmographics from an HTTP company-lookup API (Clearbit's shape), with a cache in the lake.

Each domain is asked for once per TTL: answers, including "not found", are kept in
enrichment/cache/companies.parquet with the time they were fetched. A run asks for at most
`max_requests` expired or missing domains, paced to `requests_per_second`; the rest wait for the
next run. Rate limits and server errors are retried by `http.send` (Retry-After honoured).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import requests

from pql import http
from pql.enrich import firmographics
from pql.frames import among
from pql.http import Budget
from pql.lake import Lake, atomic_file

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://company.clearbit.com"
FIND_PATH = "/v2/companies/find"
ATTEMPTS = 6
PROGRESS_EVERY = 100
TIMEOUT_S = 30
CACHE_COLUMNS = [
    "domain",
    "found",
    "fetched_at",
    "employees",
    "industry",
    "country",
    "revenue_band",
]


def session(conn) -> tuple[requests.Session, str | None]:
    """The API client for a connection (pql.connections.Conn): the key (its password) as a
    Bearer token, and the base URL (None: the vendor's own host)."""
    return http.session(conn, bearer=conn.secret("the enrichment API key")), conn.host


def cache_path(lake: Lake) -> Path:
    return lake.root / "enrichment" / "cache" / "companies.parquet"


def read_cache(lake: Lake) -> pd.DataFrame:
    """Every domain asked so far: found or not, when, and what was answered."""
    path = cache_path(lake)
    if not path.exists():
        return _cache_frame([])
    return _cache_frame(pd.read_parquet(path))


def _cache_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=CACHE_COLUMNS)
    return df.astype(
        {
            "domain": "string",
            "found": "boolean",
            "fetched_at": "datetime64[us, UTC]",
            "employees": "Int64",
            "industry": "string",
            "country": "string",
            "revenue_band": "string",
        }
    )


def _write_cache(lake: Lake, cache: pd.DataFrame) -> None:
    with atomic_file(cache_path(lake)) as f:
        cache.to_parquet(f, index=False)


def _row(domain: str, found: bool, at: datetime, body: dict | None = None) -> dict:
    body = body or {}
    metrics = body.get("metrics") or {}
    employees = metrics.get("employees")
    return {
        "domain": domain,
        "found": found,
        "fetched_at": at,
        "employees": int(employees) if isinstance(employees, int | float) else None,
        "industry": (body.get("category") or {}).get("industry"),
        "country": (body.get("geo") or {}).get("countryCode"),
        "revenue_band": metrics.get("estimatedAnnualRevenue"),
    }


def _clean(domains: Iterable[str | None]) -> list[str]:
    out = {str(d).strip().lower() for d in domains if d is not None and not pd.isna(d)}
    return sorted(d for d in out if d)


def fetch(
    session: requests.Session,
    base_url: str | None,
    domains: Iterable[str],
    lake: Lake,
    *,
    ttl_days: int,
    requests_per_second: float,
    max_requests: int,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
    connection_id: str = "enrichment_default",
) -> pd.DataFrame:
    """firmographics.COLUMNS rows for the domains the API knows (from the cache when still fresh).

    Expired entries that this run could not refresh are still used. `df.attrs["enrichment"]`
    holds the run's counts: requested, found, not_found, pending (the API is still researching),
    left (for the next run) and cached (fresh in the cache, not asked). `sleep` paces the
    requests and waits between retries.
    """
    now = now or datetime.now(UTC)
    url = (base_url or DEFAULT_HOST).rstrip("/") + FIND_PATH
    wanted = _clean(domains)
    cache = read_cache(lake)
    fresh = cache[cache["fetched_at"] > now - timedelta(days=ttl_days)]
    fresh_domains = set(fresh["domain"])
    due = [d for d in wanted if d not in fresh_domains]
    todo, left = due[:max_requests], len(due) - min(len(due), max_requests)
    counts = {"requested": 0, "found": 0, "not_found": 0, "pending": 0, "left": left}
    counts["cached"] = len(wanted) - len(due)
    log.info(
        "enrichment: %d domains, %d fresh in the cache, %d to ask %s%s",
        len(wanted),
        counts["cached"],
        len(todo),
        url,
        f", {left} left for the next run (max_requests_per_run={max_requests})" if left else "",
    )
    budget = Budget([(1, 1.0 / requests_per_second)], sleep=sleep)
    fetched: list[dict] = []
    try:
        for domain in todo:
            budget.acquire()
            row = _lookup(session, url, domain, now, sleep, connection_id)
            counts["requested"] += 1
            if row is None:
                counts["pending"] += 1
            else:
                fetched.append(row)
                counts["found" if row["found"] else "not_found"] += 1
            if counts["requested"] % PROGRESS_EVERY == 0:
                log.info(
                    "enrichment: %d/%d asked (%d found, %d not found)",
                    counts["requested"],
                    len(todo),
                    counts["found"],
                    counts["not_found"],
                )
    finally:
        if fetched:  # keep what was paid for, even when the run stops half way
            new = _cache_frame(fetched)
            kept = cache[~among(cache["domain"], new["domain"])]
            cache = pd.concat([kept, new]) if len(kept) else new
            _write_cache(lake, cache.sort_values("domain").reset_index(drop=True))
    log.info("enrichment: %s", counts)
    known = cache[among(cache["domain"], wanted) & cache["found"].fillna(False)]
    out = firmographics.normalise(known.drop(columns=["found", "fetched_at"]))
    out.attrs["enrichment"] = counts
    return out


def _lookup(
    session: requests.Session,
    url: str,
    domain: str,
    now: datetime,
    sleep: Callable[[float], None],
    connection_id: str,
) -> dict | None:
    """One domain's cache row (None: the API is still looking it up, ask again next run).

    Raises on answers that another try would not change.
    """
    resp = http.send(
        session,
        "GET",
        url,
        attempts=ATTEMPTS,
        sleep=sleep,
        params={"domain": domain},
        timeout=TIMEOUT_S,
    )
    status = resp.status_code
    if status == 200:
        return _row(domain, True, now, resp.json())
    if status == 202:  # queued for research by the vendor: not an answer yet
        return None
    if status == 404:
        return _row(domain, False, now)
    if status == 422:  # the API will never know a malformed domain: cache it as unknown
        log.warning("enrichment: %s rejected as invalid: %s", domain, resp.text[:200])
        return _row(domain, False, now)
    if status in (401, 403):
        raise http.CredentialsError(
            f"the enrichment API at {url} rejected the API key of connection "
            f"{connection_id!r} ({status}): put a valid key in its password"
        )
    raise http.HttpError(
        f"the enrichment API at {url} answered {status} for {domain} "
        f"after {ATTEMPTS} attempts: {resp.text[:200]}"
    )
