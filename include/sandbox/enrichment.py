"""Firmographic enrichment emulator: a Clearbit-style company lookup by domain.

``GET /enrichment/v2/companies/find?domain=acme.com`` with ``Authorization: Bearer <api_key>``
(the vendor's own path is ``/v2/companies/find`` on https://company.clearbit.com; the sandbox
serves it under ``/enrichment``, which is why its connection's host ends in ``/enrichment``).

* 200 ``{"domain", "name", "metrics": {"employees", "estimatedAnnualRevenue"},
  "category": {"industry"}, "geo": {"countryCode"}}`` for a company of the seeded world;
* 404 ``{"error": {"type": "unknown_record", ...}}`` for any other domain (free mail included);
* 401 for a missing or wrong key, 422 for a missing or malformed domain;
* 429 with ``Retry-After`` beyond ``settings["enrichment_rps"]`` requests in a rolling second.

The companies are the world's accounts, derived from ``world/spec.json`` that the seeder writes
(``world.accounts`` is deterministic from the spec). Fault injection: target ``"enrichment"``.
Every request is counted in ``state.counters`` (``"enrichment"`` and ``"enrichment.<status>"``).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sandbox import world
from sandbox.state import SandboxState, vendor_credentials

FIND_PATH = "/enrichment/v2/companies/find"
MOUNT = "/enrichment"
REVENUE_PER_EMPLOYEE = 150_000  # USD a year, a typical software-company ratio
REVENUE_BANDS = (
    (1_000_000, "$0-$1M"),
    (10_000_000, "$1M-$10M"),
    (50_000_000, "$10M-$50M"),
    (100_000_000, "$50M-$100M"),
    (250_000_000, "$100M-$250M"),
    (500_000_000, "$250M-$500M"),
    (1_000_000_000, "$500M-$1B"),
    (10_000_000_000, "$1B-$10B"),
)
TOP_BAND = "$10B+"
_DOMAIN_RE = re.compile(r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class EnrichmentError(Exception):
    def __init__(self, status: int, kind: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="enrichment"'
        body = {"error": {"type": self.kind, "message": self.message}}
        return JSONResponse(body, status_code=self.status, headers=headers or None)


# --------------------------------------------------------------------------------------------
# Credentials and connection
# --------------------------------------------------------------------------------------------


def credentials(state: SandboxState) -> dict:
    """{"api_key"}: made with the other vendors' keys, or added on first use to older sandboxes."""
    return vendor_credentials(state, "enrichment")


def connection_env(state: SandboxState, base_url: str) -> dict[str, str]:
    """AIRFLOW_CONN_ENRICHMENT_DEFAULT: host = the sandbox's enrichment mount, password = key."""
    conn = {
        "conn_type": "http",
        "host": f"{base_url}{MOUNT}",
        "password": credentials(state)["api_key"],
    }
    return {"AIRFLOW_CONN_ENRICHMENT_DEFAULT": json.dumps(conn)}


# --------------------------------------------------------------------------------------------
# Companies: the seeded world's accounts
# --------------------------------------------------------------------------------------------


def revenue_band(employees: int) -> str:
    """The estimated annual revenue band, derived from the head count alone."""
    revenue = employees * REVENUE_PER_EMPLOYEE
    return next((band for upper, band in REVENUE_BANDS if revenue < upper), TOP_BAND)


def company_json(account: world.Account) -> dict:
    """The lookup answer for one account, in the vendor's shape (fields we do not model omitted)."""
    return {
        "id": account.key,
        "domain": account.domain,
        "name": account.name,
        "metrics": {
            "employees": account.employees,
            "estimatedAnnualRevenue": revenue_band(account.employees),
        },
        "category": {"industry": account.industry},
        "geo": {"countryCode": account.country},
    }


@dataclass
class _Companies:
    """The world's accounts by domain, re-derived when world/spec.json changes."""

    state: SandboxState

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._by_domain: dict[str, world.Account] = {}

    def get(self, domain: str) -> world.Account | None:
        path = self.state.root / "world" / "spec.json"
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._by_domain = _load_accounts(path) if stamp else {}
                self._stamp = stamp
            return self._by_domain.get(domain)


def _load_accounts(path) -> dict[str, world.Account]:
    doc = json.loads(path.read_text())
    doc["start"] = date.fromisoformat(doc["start"])
    doc.pop("end", None)
    doc["event_names"] = tuple(tuple(pair) for pair in doc.get("event_names", ()))
    spec = world.WorldSpec(**doc)
    return {a.domain: a for a in world.accounts(spec)}


# --------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------


def _authenticate(state: SandboxState, request: Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise EnrichmentError(401, "auth_required", "An API key is required (Bearer token).")
    expected = credentials(state)["api_key"]
    if not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise EnrichmentError(401, "auth_required", "The API key is invalid.")


def _domain(request: Request) -> str:
    raw = request.query_params.get("domain")
    if raw is None or not raw.strip():
        raise EnrichmentError(422, "invalid_params", "domain is required")
    domain = raw.strip().lower().removeprefix("www.")
    if not _DOMAIN_RE.match(domain):
        raise EnrichmentError(422, "invalid_params", f"domain {raw!r} is invalid")
    return domain


def _fault(status: int) -> EnrichmentError:
    if status == 429:
        return EnrichmentError(429, "rate_limit", "Rate limit exceeded.", retry_after=1)
    if status >= 500:
        return EnrichmentError(status, "server_error", "Internal server error.")
    return EnrichmentError(status, "injected_fault", f"injected fault {status}")


def router(state: SandboxState) -> APIRouter:
    """The enrichment route, bound to `state`: faults, auth, rate limit, then the lookup."""
    api = APIRouter()
    credentials(state)  # create the key at startup, before any client asks for it
    companies = _Companies(state)

    @api.get(FIND_PATH)
    def find(request: Request) -> JSONResponse:
        try:
            fault = state.take_fault("enrichment")
            if fault is not None:
                raise _fault(fault)
            _authenticate(state, request)
            limit = int(state.settings["enrichment_rps"])
            if not state.limiter("enrichment", limit, 1.0).hit(time.monotonic()):
                raise EnrichmentError(429, "rate_limit", "Rate limit exceeded.", retry_after=1)
            domain = _domain(request)
            account = companies.get(domain)
            if account is None:
                raise EnrichmentError(404, "unknown_record", f"Unknown domain: {domain}")
            response = JSONResponse(company_json(account))
        except EnrichmentError as exc:
            response = exc.response()
        state.count("enrichment")
        state.count(f"enrichment.{response.status_code}")
        return response

    return api
