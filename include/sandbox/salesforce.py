"""Salesforce emulator: OAuth, REST (describe, SOQL, sObjects, Collections), Bulk API 2.0, limits,
and the SOAP partner API's login and convertLead.

Follows docs/salesforce.md (cited by section). simple-salesforce always builds https://
URLs (docs/salesforce.md §9), so the sandbox server also listens with TLS on a second port
(`state.salesforce_url`, certificate from `tls_files`); every route is served on both ports.

Every /services/data/vXX.X request passes a gate: queued fault (target "salesforce"), Bearer
session (idle sessions expire after `salesforce_session_seconds` -> 401 INVALID_SESSION_ID),
the daily request budget and concurrency limit (403 REQUEST_LIMIT_EXCEEDED), then the endpoint;
responses carry `Sforce-Limit-Info`. Record writes can be made to fail with UNABLE_TO_LOCK_ROW:
queue faults with target "salesforce_lock" (one record each) or set `salesforce_lock_rate`.
A "salesforce_lost_write" fault answers one Collections update as saved and then undoes it
(as a Flow reverting the values would). `salesforce_latency_ms` delays every gated request by a
random 0..N ms. Requests are counted in state.counters as
"salesforce", "salesforce.<endpoint>" and "salesforce.<status>". Storage and the org's rules
live in sandbox.salesforce_store.

SOAP (`POST /services/Soap/u/{version}`, also under the login's serverUrl) dispatches on the
Body's element: login, or convertLead, which passes the same gate with the session id of its
SessionHeader and answers refusals as SOAP Faults (HTTP 500). `salesforce_lead_field_mapping`
({Lead field: Contact field}, default {}: nothing mapped) is the org's Lead field mapping that
conversion copies onto a new Contact, or into the blank fields of the Contact merged into.
convert_lead / convert_leads are the client side (a simple-salesforce client's session).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import math
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from sandbox import world
from sandbox.salesforce_store import (
    API_VERSION,
    BULK_QUERY_PAGE,
    COLLECTION_LIMIT,
    CONVERT_LIMIT,
    DELIMITERS,
    INTEGRATION_USER_ID,
    JOB_PREFIX,
    LINE_ENDINGS,
    LOCATOR_PREFIX,
    MAX_VERSION,
    MIN_QUERY_BATCH,
    MIN_VERSION,
    ORG_ID,
    QUERY_BATCH,
    RETRIEVE_LIMIT,
    ROLLED_BACK,
    TERMINAL_STATES,
    ConvertResult,
    LeadConvert,
    SalesforceError,
    SalesforceStore,
    SaveError,
    SaveResult,
    Tx,
    check_ingest_spec,
    csv_text,
    decode_locator,
    encode_locator,
    fmt_datetime,
    full_record,
    index_key,
    job_info,
    normalize_id,
    not_found,
    parse_soql,
    process_ingest,
    render,
    render_csv_row,
    run_query,
    unprocessed_csv,
)
from sandbox.state import SandboxState, vendor_credentials, write_json_private

__all__ = [
    "SalesforceError",
    "SalesforceStore",
    "connection_env",
    "convert_lead",
    "convert_leads",
    "credentials",
    "instance_url",
    "router",
    "seed",
    "tls_files",
]

DATA = "/services/data/{version}"
JsonBody = Annotated[Any, Body()]
DAILY_BULK_BATCHES, DAILY_BULK_QUERY_JOBS = 15_000, 10_000
# Salesforce splits uploads into batches of about this size (docs/salesforce.md §5).
BULK_BATCH_RECORDS = 10_000
_TLS_LOCK = threading.Lock()


# ---------------------------------------------------------------- credentials and connection


def credentials(state: SandboxState) -> dict:
    """username, password, security_token, client_id, client_secret (added to older sandboxes)."""
    return vendor_credentials(state, "salesforce")


def tls_files(state: SandboxState) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost (made once per sandbox).

    -> {"cert", "key", "ca"}: clients verify with `ca` (requests: session.verify = ca and
    session.trust_env = False, since REQUESTS_CA_BUNDLE would otherwise win).
    """
    folder = state.root / "tls"
    paths = {
        "cert": folder / "server.pem",
        "key": folder / "server-key.pem",
        "ca": folder / "ca.pem",
    }
    with _TLS_LOCK:
        if not all(p.exists() for p in paths.values()):
            folder.mkdir(parents=True, exist_ok=True)
            _make_certificates(paths)
    return paths


def _make_certificates(paths: dict[str, Path]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PQL sandbox CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(paths["key"], key_pem)
    _write_private(paths["cert"], cert.public_bytes(pem) + ca.public_bytes(pem))
    _write_private(paths["ca"], ca.public_bytes(pem))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(path)


def publish_instance_url(state: SandboxState, url: str) -> None:
    """Record the TLS base URL (the Salesforce instance) for clients and connection_env."""
    state.salesforce_url = url
    doc = {"instance_url": url, "ca_file": str(tls_files(state)["ca"])}
    write_json_private(state.root / "salesforce.json", doc)


def instance_url(state: SandboxState, base_url: str | None = None) -> str | None:
    """The Salesforce instance URL (https) of the running sandbox; base_url as a last resort."""
    if getattr(state, "salesforce_url", ""):
        return state.salesforce_url
    path = state.root / "salesforce.json"
    if path.exists():
        return json.loads(path.read_text()).get("instance_url") or base_url
    return base_url


def login_domain(url: str) -> str:
    """A `domain` that makes simple-salesforce's own login reach this sandbox's token endpoint.

    simple-salesforce builds `https://{domain}.salesforce.com/services/oauth2/token`; with
    domain `127.0.0.1:PORT/services/oauth2/token#` that URL is this sandbox's endpoint followed
    by a fragment (which is never sent). Sandbox only: a real org's domain is `login`, `test` or
    `<MyDomain>.my`.
    """
    return f"{urlsplit(url).netloc}/services/oauth2/token#"


def connection_env(state: SandboxState, base_url: str) -> dict[str, str]:
    """AIRFLOW_CONN_SALESFORCE_DEFAULT for the provider's SalesforceHook (5.15.1).

    login/password (+ security token) with consumer_key/consumer_secret: the hook logs in with the
    OAuth username-password flow through `domain` (see login_domain), or uses `instance_url` when
    given a session_id. `ca_bundle` (ignored by the hook) is the CA file for requests' verify.
    """
    creds = credentials(state)
    url = instance_url(state, base_url) or base_url
    extra = {
        "instance_url": url,
        "domain": login_domain(url),
        "version": API_VERSION,
        "consumer_key": creds["client_id"],
        "consumer_secret": creds["client_secret"],
        "ca_bundle": str(tls_files(state)["ca"]),
    }
    conn = {
        "conn_type": "salesforce",
        "login": creds["username"],
        "password": creds["password"] + creds["security_token"],
        "extra": extra,
    }
    return {"AIRFLOW_CONN_SALESFORCE_DEFAULT": json.dumps(conn)}


# ---------------------------------------------------------------- responses


def _error(error: SalesforceError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _save_errors(result: SaveResult) -> SalesforceError:
    """Single-record writes answer 400 with every save error as a top-level item
    (docs/salesforce.md §3, §6)."""
    first, *rest = result.errors
    more = [{"message": e.message, "errorCode": e.code, "fields": list(e.fields)} for e in rest]
    return SalesforceError(400, first.code, first.message, list(first.fields), more)


def _session_error() -> SalesforceError:
    return SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")


def _limit_error(which: str = "TotalRequests") -> SalesforceError:
    return SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", f"{which} Limit exceeded.")


def _fault_response(status: int) -> Response:
    """An injected failure in Salesforce's own shape for that status
    (docs/salesforce.md §6, §7: no 429 exists)."""
    error = _injected(status)
    return _gateway_page(status) if error is None else _error(error)


def _gateway_page(status: int) -> Response:
    page = f"<html><body><h1>{status} Gateway error</h1></body></html>"
    return Response(page, status_code=status, media_type="text/html")


def _injected(status: int) -> SalesforceError | None:
    """The error an injected fault stands for; None for a gateway's (an HTML page)."""
    if status in (403, 429):
        return _limit_error()
    if status == 401:
        return _session_error()
    if status in (502, 504):
        return None
    known = {
        400: ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"),
        404: ("NOT_FOUND", "The requested resource does not exist"),
        500: (
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support: "
            f"{secrets.randbelow(10**9)}-{secrets.randbelow(10**5)} (-{secrets.randbelow(10**9)})",
        ),
        503: ("SERVER_UNAVAILABLE", "Server temporarily unavailable, please try again later."),
    }
    code, message = known.get(status, ("UNKNOWN_EXCEPTION", f"injected fault {status}"))
    return SalesforceError(status, code, message)


def _version(raw: str) -> str:
    m = re.fullmatch(r"v(\d+)\.0", raw or "")
    if not m or not MIN_VERSION <= int(m.group(1)) <= MAX_VERSION:
        raise not_found()
    return raw[1:]


def _records_of(body: Any) -> list:
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "Expected a body with a records array")
    records = body["records"]
    if len(records) > COLLECTION_LIMIT:
        raise SalesforceError(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {COLLECTION_LIMIT} records into "
            "this call",
        )
    if not all(isinstance(r, dict) for r in records):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
    return records


def _type_of(record: dict) -> str | None:
    attributes = record.get("attributes")
    return attributes.get("type") if isinstance(attributes, dict) else None


def _csv_response(text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text, media_type="text/csv", headers=headers)


# ---------------------------------------------------------------- the gate


class _Gate:
    """Faults, session, limits, then the endpoint; adds Sforce-Limit-Info
    (docs/salesforce.md §7)."""

    def __init__(self, state: SandboxState, store: SalesforceStore):
        self.state, self.store = state, store
        self.in_flight = 0
        self._lock = threading.Lock()

    async def __call__(
        self, request: Request, handler: Callable[[Request], Awaitable[Response]], kind: str
    ) -> Response:
        self.state.count("salesforce")
        self.state.count(f"salesforce.{kind}")
        await self.state.latency("salesforce")
        fault = self.state.take_fault("salesforce")
        if fault is not None:
            response = _fault_response(fault)
        else:
            try:
                response = await self._admitted(request, handler)
            except SalesforceError as error:
                response = _error(error)
        self.state.count(f"salesforce.{response.status_code}")
        return response

    def _daily(self):
        limit = int(self.state.settings["salesforce_daily_api_requests"])
        return self.state.limiter("salesforce_daily", limit, 86_400.0), limit

    async def soap(
        self, kind: str, token: str | None, call: Callable[[], Awaitable[Response]]
    ) -> Response:
        """A SOAP API call through the same gate (session from its SessionHeader); whatever
        refuses it answers as a SOAP fault."""
        self.state.count("salesforce")
        self.state.count(f"salesforce.{kind}")
        await self.state.latency("salesforce")
        fault = self.state.take_fault("salesforce")
        if fault is not None:
            response = _soap_fault_response(fault)
        else:
            try:
                response = await self._limited(token, call)
            except SalesforceError as error:
                response = _soap_error(error)
        self.state.count(f"salesforce.{response.status_code}")
        return response

    async def _admitted(self, request: Request, handler) -> Response:
        if "version" in request.path_params:
            _version(request.path_params["version"])
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "oauth"):
            raise _session_error()

        async def call() -> Response:
            try:
                return await handler(request)
            except SalesforceError as error:
                return _error(error)
            except RequestValidationError:
                return _error(
                    SalesforceError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
                )

        return await self._limited(token.strip(), call)

    async def _limited(self, token: str | None, call: Callable[[], Awaitable[Response]]):
        """Session, daily budget and concurrency, then `call`; adds Sforce-Limit-Info."""
        timeout = float(self.state.settings["salesforce_session_seconds"])
        if not token or not await run_in_threadpool(self._touch, token, timeout):
            raise _session_error()
        limiter, limit = self._daily()
        if not limiter.hit(time.monotonic()):
            raise _limit_error()
        with self._lock:
            if self.in_flight >= int(self.state.settings["salesforce_concurrent_requests"]):
                raise _limit_error("ConcurrentPerOrgLongTxn")
            self.in_flight += 1
        try:
            response = await call()
        finally:
            with self._lock:
                self.in_flight -= 1
        used = limit - limiter.remaining(time.monotonic())
        response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{limit}"
        return response

    def _touch(self, token: str, timeout: float) -> bool:
        with self.store.transaction() as tx:
            return tx.touch_session(token, timeout)


def _gated_route(gate: _Gate) -> type[APIRoute]:
    class GatedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()
            kind = self.name

            async def gated(request: Request) -> Response:
                return await gate(request, handler, kind)

            return gated

    return GatedRoute


# ---------------------------------------------------------------- SOAP partner API

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XSI_NIL = f"{{{_XSI}}}nil"
_CLIENT = "soapenv:Client"  # the fault code of a request that is not a well-formed call


def _soap_fault(
    code: str, message: str, status: int = 500, detail: str = "UnexpectedErrorFault"
) -> Response:
    """A SOAP Fault as Salesforce sends it: `sf:<CODE>` with the code and message again in its
    detail, or soapenv:Client (no detail) for a request that is not a call at all."""
    if code == _CLIENT:
        inner = f"<faultcode>{code}</faultcode><faultstring>{xml_escape(message)}</faultstring>"
    else:
        inner = (
            f"<faultcode>sf:{code}</faultcode><faultstring>{xml_escape(f'{code}: {message}')}"
            f'</faultstring><detail><sf:{detail} xsi:type="sf:{detail}"><sf:exceptionCode>'
            f"{code}</sf:exceptionCode><sf:exceptionMessage>{xml_escape(message)}"
            f"</sf:exceptionMessage></sf:{detail}></detail>"
        )
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" '
        f'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="{_XSI}"><soapenv:Body>'
        f"<soapenv:Fault>{inner}</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return Response(body, status_code=status, media_type="text/xml")


def _soap_error(error: SalesforceError) -> Response:
    message = error.message
    if error.code == "INVALID_SESSION_ID":  # the SOAP API's wording of the REST 401
        message = "Invalid Session ID found in SessionHeader: Illegal Session"
    return _soap_fault(error.code, message, 503 if error.status == 503 else 500)


def _soap_fault_response(status: int) -> Response:
    """An injected failure as the SOAP API answers it (a gateway's stays an HTML page)."""
    error = _injected(status)
    return _gateway_page(status) if error is None else _soap_error(error)


def _soap_request(raw: bytes) -> tuple[ET.Element | None, ET.Element]:
    """(Header, the operation in the Body) of a SOAP 1.1 request; a soapenv:Client error if it
    is not one. DTDs are refused (no entity expansion), as Salesforce does."""
    if re.search(rb"<!DOCTYPE", raw, re.IGNORECASE):
        raise SalesforceError(500, _CLIENT, "DOCTYPE is disallowed")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as error:
        raise SalesforceError(500, _CLIENT, f"Malformed SOAP request: {error}") from None
    body = root.find(f"{{{SOAP_ENV}}}Body") if root.tag == f"{{{SOAP_ENV}}}Envelope" else None
    operation = next(iter(body), None) if body is not None else None
    if operation is None:
        raise SalesforceError(500, _CLIENT, "Expected a SOAP 1.1 Envelope with a call in its Body")
    return root.find(f"{{{SOAP_ENV}}}Header"), operation


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _soap_child(parent: ET.Element | None, *path: str) -> ET.Element | None:
    """The element at `path` of local names below `parent` (any namespace)."""
    for name in path:
        if parent is None:
            return None
        parent = next((e for e in parent if _local(e.tag) == name), None)
    return parent


def _soap_value(parent: ET.Element | None, *path: str) -> str | None:
    element = _soap_child(parent, *path)
    if element is None or element.get(_XSI_NIL) in ("true", "1"):
        return None
    return (element.text or "").strip()


def _soap_flag(parent: ET.Element, name: str) -> bool:
    value = _soap_value(parent, name)
    if value in (None, ""):
        return False
    if value.lower() not in ("true", "false", "1", "0"):
        raise SalesforceError(500, _CLIENT, f"'{value}' is not valid for the type xsd:boolean")
    return value.lower() in ("true", "1")


def _soap_version(raw: str) -> None:
    m = re.fullmatch(r"(\d+)\.0", raw)
    if not m or not MIN_VERSION <= int(m.group(1)) <= MAX_VERSION:
        message = "Invalid Api version specified on URL"
        raise SalesforceError(500, "UNSUPPORTED_API_VERSION", message)


def _lead_converts(operation: ET.Element) -> list[LeadConvert]:
    """convertLead's leadConverts elements (at most CONVERT_LIMIT)."""
    items = [e for e in operation if _local(e.tag) == "leadConverts"]
    if len(items) > CONVERT_LIMIT:
        message = (
            f"record limit reached. cannot submit more than {CONVERT_LIMIT} records into this call"
        )
        raise SalesforceError(500, "EXCEEDED_ID_LIMIT", message)
    converts = []
    for item in items:
        _soap_flag(item, "sendNotificationEmail")  # accepted (and checked), never sent
        converts.append(
            LeadConvert(
                _soap_value(item, "leadId"),
                converted_status=_soap_value(item, "convertedStatus"),
                account_id=_soap_value(item, "accountId"),
                contact_id=_soap_value(item, "contactId"),
                opportunity_id=_soap_value(item, "opportunityId"),
                create_opportunity=not _soap_flag(item, "doNotCreateOpportunity"),
                opportunity_name=_soap_value(item, "opportunityName") or None,
                owner_id=_soap_value(item, "ownerId"),
                overwrite_lead_source=_soap_flag(item, "overwriteLeadSource"),
            )
        )
    return converts


def _soap_id(name: str, value: str | None) -> str:
    return f"<{name}>{value}</{name}>" if value else f'<{name} xsi:nil="true"/>'


def _convert_answer(results: list[ConvertResult]) -> str:
    """convertLeadResponse: a LeadConvertResult per lead, in request order."""
    out = []
    for r in results:
        errors = "".join(
            "<errors>"
            + "".join(f"<fields>{xml_escape(f)}</fields>" for f in e.fields)
            + f"<message>{xml_escape(e.message)}</message><statusCode>{e.code}</statusCode>"
            "</errors>"
            for e in r.errors
        )
        out.append(
            f"<result>{_soap_id('accountId', r.account_id)}{_soap_id('contactId', r.contact_id)}"
            f"{errors}{_soap_id('leadId', r.lead_id)}"
            f"{_soap_id('opportunityId', r.opportunity_id)}"
            f"<success>{str(r.success).lower()}</success></result>"
        )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" '
        f'xmlns="{PARTNER}" xmlns:xsi="{_XSI}"><soapenv:Body><convertLeadResponse>'
        + "".join(out)
        + "</convertLeadResponse></soapenv:Body></soapenv:Envelope>"
    )


class _Soap:
    """SOAP calls past login, through the gate like REST requests."""

    def __init__(self, gate: _Gate, org: _Org):
        self.gate, self.org = gate, org

    async def convert_lead(
        self, version: str, header: ET.Element | None, operation: ET.Element
    ) -> Response:
        async def call() -> Response:
            _soap_version(version)
            converts = _lead_converts(operation)
            results = await run_in_threadpool(self.org.convert_leads, converts)
            return Response(_convert_answer(results), media_type="text/xml")

        token = _soap_value(header, "SessionHeader", "sessionId")
        return await self.gate.soap("convertLead", token, call)


# ---------------------------------------------------------------- query cursors


@dataclass
class _Cursor:
    records: list[dict]
    total: int
    size: int
    version: str
    touched: float = field(default_factory=time.monotonic)


class _Cursors:
    """Open query locators (`nextRecordsUrl`), dropped after 15 idle minutes or when too many."""

    IDLE_S, MAX_OPEN = 15 * 60, 50

    def __init__(self):
        self._open: OrderedDict[str, _Cursor] = OrderedDict()
        self._lock = threading.Lock()

    def page(self, cursor: _Cursor, offset: int, locator: str | None) -> dict:
        chunk = cursor.records[offset : offset + cursor.size]
        end = offset + len(chunk)
        body: dict[str, Any] = {"totalSize": cursor.total, "done": end >= len(cursor.records)}
        if not body["done"]:
            with self._lock:
                if locator is None:
                    locator = LOCATOR_PREFIX + secrets.token_hex(8)[:15].upper()
                    self._open[locator] = cursor
                    while len(self._open) > self.MAX_OPEN:
                        self._open.popitem(last=False)
            body["nextRecordsUrl"] = f"/services/data/v{cursor.version}/query/{locator}-{end}"
        body["records"] = chunk
        return body

    def get(self, locator: str) -> _Cursor | None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, c in self._open.items() if now - c.touched > self.IDLE_S]:
                del self._open[key]
            cursor = self._open.get(locator)
            if cursor is not None:
                cursor.touched = now
                self._open.move_to_end(locator)
            return cursor


def _batch_size(request: Request, settings) -> int:
    size = int(settings["salesforce_query_batch_size"])
    options = request.headers.get("sforce-query-options", "")
    m = re.search(r"batchSize\s*=\s*(\d+)", options)
    if m:
        size = min(size, max(MIN_QUERY_BATCH, min(QUERY_BATCH, int(m.group(1)))))
    return max(1, size)


# ---------------------------------------------------------------- the router


def router(state: SandboxState) -> APIRouter:
    """The Salesforce routes: OAuth and the SOAP API (login, convertLead), then the gated REST
    and Bulk 2.0 API."""
    store = SalesforceStore(state)
    credentials(state)  # create the credentials at startup, before any client asks for them
    gate, org = _Gate(state, store), _Org(state, store)
    open_api = APIRouter()
    _login_routes(open_api, state, store, _Soap(gate, org))
    api = APIRouter(route_class=_gated_route(gate))
    org.routes(api)
    open_api.include_router(api)
    return open_api


def _check_client(state: SandboxState, client_id: str | None, secret: str | None):
    creds = credentials(state)
    if not client_id or not hmac.compare_digest(client_id, creds["client_id"]):
        return "invalid_client_id", "client identifier invalid"
    if not secret or not hmac.compare_digest(secret, creds["client_secret"]):
        return "invalid_client", "invalid client credentials"
    return None


def _check_user(state: SandboxState, username: str | None, password: str | None) -> bool:
    creds = credentials(state)
    expected = creds["password"] + creds["security_token"]
    return bool(username and password) and hmac.compare_digest(
        f"{username}\n{password}".encode(), f"{creds['username']}\n{expected}".encode()
    )


def _login_routes(api: APIRouter, state: SandboxState, store: SalesforceStore, soap: _Soap) -> None:
    def oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": error, "error_description": description}, status_code=status)

    @api.post("/services/oauth2/token")
    async def token(request: Request) -> Response:
        """Username-password and client-credentials flows (docs/salesforce.md §1)."""
        state.count("salesforce")
        state.count("salesforce.oauth_token")
        fault = state.take_fault("salesforce_oauth")
        if fault is not None:
            return oauth_error("unknown_error", "retry your request", fault)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                return oauth_error("invalid_client", "invalid client credentials")
        grant = form.get("grant_type")
        if grant not in ("password", "client_credentials"):
            return oauth_error("unsupported_grant_type", "grant type not supported")
        problem = _check_client(state, client_id, secret)
        if problem:
            return oauth_error(*problem)
        if grant == "password" and not _check_user(
            state, form.get("username"), form.get("password")
        ):
            return oauth_error("invalid_grant", "authentication failure")
        with store.transaction() as tx:
            access_token = tx.new_session(grant)
        base = str(request.base_url).rstrip("/")
        identity = f"{base}/id/{ORG_ID}/{INTEGRATION_USER_ID}"
        issued = str(int(time.time() * 1000))
        mac = hmac.new(secret.encode(), (identity + issued).encode(), hashlib.sha256).digest()
        return JSONResponse(
            {
                "access_token": access_token,
                "instance_url": base,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued,
                "signature": base64.b64encode(mac).decode(),
                "scope": "api",
            }
        )

    # serverUrl (the login answer) adds the org id to the path; both take every call.
    @api.post("/services/Soap/u/{version}")
    @api.post("/services/Soap/u/{version}/{org_id}")
    async def soap_api(version: str, request: Request) -> Response:
        """The SOAP partner API: the Body's element names the call (login, convertLead)."""
        raw = await request.body()
        try:
            header, operation = _soap_request(raw)
        except SalesforceError as error:
            state.count("salesforce")
            state.count("salesforce.soap_fault")
            return _soap_error(error)
        if operation.tag == f"{{{PARTNER}}}login":
            return soap_login(version, raw.decode(errors="replace"), request)
        if operation.tag == f"{{{PARTNER}}}convertLead":
            return await soap.convert_lead(version, header, operation)
        state.count("salesforce")
        state.count("salesforce.soap_fault")
        return _soap_fault(_CLIENT, f"No operation available for request {operation.tag}")

    def soap_login(version: str, text: str, request: Request) -> Response:
        """SOAP login (username + password + security token, no consumer key;
        docs/salesforce.md §1)."""
        state.count("salesforce")
        state.count("salesforce.soap_login")

        def element(name: str) -> str | None:
            m = re.search(rf"<(?:\w+:)?{name}>(.*?)</(?:\w+:)?{name}>", text, re.DOTALL)
            return html.unescape(m.group(1)) if m else None

        if not _check_user(state, element("username"), element("password")):
            message = "Invalid username, password, security token; or user locked out."
            return _soap_fault("INVALID_LOGIN", message, detail="LoginFault")
        with store.transaction() as tx:
            session = tx.new_session("soap")
        base = str(request.base_url).rstrip("/")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{base}/services/Soap/m/{version}/{ORG_ID[:15]}"
            "</metadataServerUrl><passwordExpired>false</passwordExpired><sandbox>true</sandbox>"
            f"<serverUrl>{base}/services/Soap/u/{version}/{ORG_ID[:15]}</serverUrl>"
            f"<sessionId>{session}</sessionId><userId>{INTEGRATION_USER_ID}</userId>"
            "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return Response(body, media_type="text/xml")

    @api.get("/services/data")
    @api.get("/services/data/")
    def versions() -> list[dict]:
        state.count("salesforce")
        state.count("salesforce.versions")
        return [
            {"label": f"v{v}.0", "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
            for v in range(MIN_VERSION, MAX_VERSION + 1)
        ]

    @api.get("/_sandbox/salesforce")
    def sandbox_info() -> dict:
        """Where the instance is and how to trust it (for tests and the CLI)."""
        return {
            "instance_url": instance_url(state),
            "ca_file": str(tls_files(state)["ca"]),
            "api_version": API_VERSION,
        }

    @api.post("/_sandbox/salesforce/expire-sessions")
    def expire_sessions() -> dict:
        return {"expired": store.expire_sessions()}


class _Undone(Exception):
    def __init__(self, answer):
        self.answer = answer


class _Org:
    """The gated REST and Bulk 2.0 endpoints of the one sandbox org."""

    def __init__(self, state: SandboxState, store: SalesforceStore):
        self.state, self.store = state, store
        self.cursors = _Cursors()
        self._random = random.Random()

    # -- helpers

    def locked(self) -> bool:
        """Whether the record about to be written is locked (queued or random lock faults)."""
        if self.state.take_fault("salesforce_lock") is not None:
            return True
        rate = float(self.state.settings.get("salesforce_lock_rate") or 0)
        return rate > 0 and self._random.random() < rate

    def tx(self):
        return self.store.transaction(lock=self.locked)

    def convert_leads(self, converts: list[LeadConvert]) -> list[ConvertResult]:
        """SOAP convertLead: each Lead in a transaction of its own (a failed one changes nothing,
        the others still convert)."""
        results = []
        for spec in converts:
            with self.tx() as tx:
                results.append(tx.convert_lead(spec))
        return results

    def add(self, api: APIRouter, path: str, methods: list[str], name: str, endpoint) -> None:
        api.add_api_route(DATA + path, endpoint, methods=methods, name=name)
        if path and not path.endswith("/"):
            api.add_api_route(DATA + path + "/", endpoint, methods=methods, name=name)

    def routes(self, api: APIRouter) -> None:
        add = self.add
        add(api, "", ["GET"], "resources", self.resources)
        add(api, "/limits", ["GET"], "limits", self.limits)
        add(api, "/sobjects", ["GET"], "describe_global", self.describe_global)
        add(api, "/sobjects/{type_name}/describe", ["GET"], "describe", self.describe)
        add(api, "/sobjects/{type_name}", ["GET"], "sobject_info", self.sobject_info)
        add(api, "/sobjects/{type_name}", ["POST"], "sobject_create", self.sobject_create)
        add(api, "/sobjects/{type_name}/{record_id}", ["GET"], "sobject_get", self.sobject_get)
        add(
            api,
            "/sobjects/{type_name}/{record_id}",
            ["PATCH"],
            "sobject_update",
            self.sobject_update,
        )
        add(
            api,
            "/sobjects/{type_name}/{record_id}",
            ["DELETE"],
            "sobject_delete",
            self.sobject_delete,
        )
        add(
            api,
            "/sobjects/{type_name}/{field}/{value}",
            ["GET"],
            "sobject_get_by_external_id",
            self.sobject_get_by_external_id,
        )
        add(
            api,
            "/sobjects/{type_name}/{field}/{value}",
            ["PATCH"],
            "sobject_upsert",
            self.sobject_upsert,
        )
        add(api, "/query", ["GET"], "query", self.query)
        add(api, "/queryAll", ["GET"], "query_all", self.query_all)
        add(api, "/query/{locator}", ["GET"], "query_more", self.query_more)
        add(api, "/queryAll/{locator}", ["GET"], "query_more", self.query_more)
        add(api, "/composite/sobjects", ["POST"], "collections_create", self.collections_create)
        add(api, "/composite/sobjects", ["PATCH"], "collections_update", self.collections_update)
        add(api, "/composite/sobjects", ["DELETE"], "collections_delete", self.collections_delete)
        add(
            api,
            "/composite/sobjects/{type_name}",
            ["GET", "POST"],
            "collections_retrieve",
            self.collections_retrieve,
        )
        add(
            api,
            "/composite/sobjects/{type_name}/{field}",
            ["PATCH"],
            "collections_upsert",
            self.collections_upsert,
        )
        for kind in ("ingest", "query"):
            jobs = _Jobs(self, kind)
            add(api, f"/jobs/{kind}", ["POST"], f"bulk_{kind}_create", jobs.create)
            add(api, f"/jobs/{kind}", ["GET"], f"bulk_{kind}_list", jobs.list)
            add(api, f"/jobs/{kind}/{{job_id}}", ["GET"], f"bulk_{kind}_get", jobs.get)
            add(api, f"/jobs/{kind}/{{job_id}}", ["PATCH"], f"bulk_{kind}_state", jobs.set_state)
            add(api, f"/jobs/{kind}/{{job_id}}", ["DELETE"], f"bulk_{kind}_delete", jobs.delete)
        ingest, query = _Jobs(self, "ingest"), _Jobs(self, "query")
        add(api, "/jobs/ingest/{job_id}/batches", ["PUT"], "bulk_ingest_upload", ingest.upload)
        add(api, "/jobs/ingest/{job_id}/{results}", ["GET"], "bulk_ingest_results", ingest.results)
        add(api, "/jobs/query/{job_id}/results", ["GET"], "bulk_query_results", query.query_results)
        api.add_api_route(
            "/services/{rest:path}",
            self.unknown,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            name="not_found",
        )

    # -- resources, limits, describe

    def unknown(self, rest: str):
        raise not_found()

    def resources(self, version: str) -> dict:
        base = f"/services/data/{version}"
        names = ["sobjects", "query", "queryAll", "limits", "composite", "jobs"]
        return {n: f"{base}/{n}" for n in names}

    def limits(self, version: str) -> dict:
        now = time.monotonic()
        settings = self.state.settings
        limit = int(settings["salesforce_daily_api_requests"])
        daily = self.state.limiter("salesforce_daily", limit, 86_400.0)
        batches = self.state.limiter("salesforce_bulk_batches", DAILY_BULK_BATCHES, 86_400.0)
        jobs = self.state.limiter("salesforce_bulk_query_jobs", DAILY_BULK_QUERY_JOBS, 86_400.0)
        return {
            "DailyApiRequests": {"Max": limit, "Remaining": daily.remaining(now)},
            "DailyBulkApiBatches": {"Max": DAILY_BULK_BATCHES, "Remaining": batches.remaining(now)},
            "DailyBulkV2QueryJobs": {
                "Max": DAILY_BULK_QUERY_JOBS,
                "Remaining": jobs.remaining(now),
            },
            "DailyBulkV2QueryFileStorageMB": {"Max": 1_048_576, "Remaining": 1_048_576},
            "ConcurrentSyncLongRunningRequests": {
                "Max": int(settings["salesforce_concurrent_requests"]),
                "Remaining": int(settings["salesforce_concurrent_requests"]),
            },
        }

    def describe_global(self, version: str) -> dict:
        schema = self.store.schema
        return {
            "encoding": "UTF-8",
            "maxBatchSize": COLLECTION_LIMIT,
            "sobjects": [o.summary(version[1:]) for o in schema.objects.values()],
        }

    def describe(self, version: str, type_name: str) -> dict:
        return self.store.schema.require(type_name).describe(version[1:])

    def sobject_info(self, version: str, type_name: str) -> dict:
        obj = self.store.schema.require(type_name)
        return {"objectDescribe": obj.summary(version[1:]), "recentItems": []}

    # -- single records (docs/salesforce.md §3)

    def sobject_create(self, version: str, type_name: str, body: JsonBody = None) -> JSONResponse:
        obj = self.store.schema.require(type_name)
        if not isinstance(body, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Expected a JSON object")
        with self.tx() as tx:
            result = tx.save(obj.name, "create", body)
        if result.errors:
            raise _save_errors(result)
        return JSONResponse(result.to_api(), status_code=201)

    def sobject_get(self, version: str, type_name: str, record_id: str, request: Request) -> dict:
        obj = self.store.schema.require(type_name)
        rid = normalize_id(record_id)
        with self.store.transaction() as tx:
            rec = tx.get(rid) if rid else None
        if rec is None or rec["_type"] != obj.name:
            raise not_found()
        if rec.get("IsDeleted"):
            raise SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return full_record(obj, rec, version[1:], _fields_param(request))

    def sobject_update(
        self, version: str, type_name: str, record_id: str, body: JsonBody = None
    ) -> Response:
        obj = self.store.schema.require(type_name)
        if not isinstance(body, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Expected a JSON object")
        rid = normalize_id(record_id)
        with self.store.transaction() as tx:
            exists = tx.get(rid) if rid else None
        if exists is None or exists["_type"] != obj.name:
            raise not_found()
        with self.tx() as tx:
            result = tx.save(obj.name, "update", body, record_id=rid)
        if result.errors:
            raise _save_errors(result)
        return Response(status_code=204)

    def sobject_delete(self, version: str, type_name: str, record_id: str) -> Response:
        obj = self.store.schema.require(type_name)
        rid = normalize_id(record_id)
        with self.tx() as tx:
            rec = tx.get(rid) if rid else None
            if rec is None or rec["_type"] != obj.name:
                raise not_found()
            result = tx.save(obj.name, "delete", {}, record_id=rid)
        if result.errors:
            if result.errors[0].code == "ENTITY_IS_DELETED":
                raise SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted")
            raise _save_errors(result)
        return Response(status_code=204)

    def _by_external_id(self, tx: Tx, type_name: str, field_name: str, value: str):
        obj = self.store.schema.require(type_name)
        fd = obj.field(field_name)
        if fd is None or not (fd.external_id or fd.name == "Id"):
            message = (
                f"Provided external ID field does not exist or is not accessible: {field_name}"
            )
            raise SalesforceError(404, "NOT_FOUND", message)
        if fd.name == "Id":
            rid = normalize_id(value)
            ids = [rid] if rid and tx.live(rid) else []
        else:
            ids = tx.lookup(obj.name, fd.name, [index_key(fd, value)])
        return obj, fd, ids

    def sobject_get_by_external_id(
        self, version: str, type_name: str, field: str, value: str, request: Request
    ) -> Response:
        with self.store.transaction() as tx:
            obj, _, ids = self._by_external_id(tx, type_name, field, value)
            records = [tx.get(i) for i in ids]
        if not records:
            raise not_found()
        if len(records) > 1:
            urls = [f"/services/data/{version}/sobjects/{obj.name}/{r['Id']}" for r in records]
            return JSONResponse(urls, status_code=300)
        return JSONResponse(full_record(obj, records[0], version[1:], _fields_param(request)))

    def sobject_upsert(
        self,
        version: str,
        type_name: str,
        field: str,
        value: str,
        request: Request,
        body: JsonBody = None,
    ) -> Response:
        if not isinstance(body, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Expected a JSON object")
        with self.tx() as tx:
            obj, fd, ids = self._by_external_id(tx, type_name, field, value)
            if len(ids) > 1:
                urls = [f"/services/data/{version}/sobjects/{obj.name}/{i}" for i in ids]
                return JSONResponse(urls, status_code=300)
            update_only = request.query_params.get("updateOnly", "").lower() == "true"
            if not ids and (update_only or fd.name == "Id"):
                raise not_found()
            values = {k: v for k, v in body.items() if k.lower() != fd.name.lower()}
            if ids:
                result = tx.save(obj.name, "update", values, record_id=ids[0])
            else:
                result = tx.save(obj.name, "create", {**values, fd.name: value})
        if result.errors:
            raise _save_errors(result)
        return JSONResponse(result.to_api(upsert=True), status_code=201 if result.created else 200)

    # -- SOQL (docs/salesforce.md §2)

    def _query(self, version: str, request: Request, include_deleted: bool) -> dict:
        soql = request.query_params.get("q")
        size = _batch_size(request, self.state.settings)
        with self.store.transaction() as tx:
            result = run_query(tx, parse_soql(soql, tx.schema), include_deleted)
            records = [render(result, r, version[1:]) for r in result.records]
        cursor = _Cursor(records, result.total, size, version[1:])
        return self.cursors.page(cursor, 0, None)

    def query(self, version: str, request: Request) -> dict:
        return self._query(version, request, False)

    def query_all(self, version: str, request: Request) -> dict:
        return self._query(version, request, True)

    def query_more(self, version: str, locator: str) -> dict:
        key, _, offset = locator.rpartition("-")
        cursor = self.cursors.get(key) if offset.isdigit() else None
        if cursor is None or int(offset) >= len(cursor.records):
            raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self.cursors.page(cursor, int(offset), key)

    # -- sObject Collections (docs/salesforce.md §4)

    def _collection(
        self, tx: Tx, work: list[tuple[Callable[[], SaveResult], bool]], all_or_none: bool
    ) -> list[dict]:
        if all_or_none:
            tx.conn.execute("SAVEPOINT collection")
        results = [(run(), upsert) for run, upsert in work]
        if all_or_none and any(not r.success for r, _ in results):
            tx.conn.execute("ROLLBACK TO collection")
            tx._cache.clear()
            results = [
                (
                    r
                    if not r.success
                    else SaveResult(r.id if not r.created else None, False, [ROLLED_BACK]),
                    upsert,
                )
                for r, upsert in results
            ]
        if all_or_none:
            tx.conn.execute("RELEASE collection")
        return [r.to_api(upsert=upsert) for r, upsert in results]

    def collections_create(self, version: str, body: JsonBody = None) -> list[dict]:
        records = _records_of(body)
        schema = self.store.schema
        for record in records:
            type_name = _type_of(record)
            if not type_name or schema.get(type_name) is None:
                raise SalesforceError(400, "INVALID_TYPE", "Must send a concrete entity type.")
        with self.tx() as tx:
            work = [(lambda r=r: tx.save(_type_of(r), "create", r), False) for r in records]
            return self._collection(tx, work, bool(body.get("allOrNone")))

    def collections_update(self, version: str, body: JsonBody = None) -> list[dict]:
        records = _records_of(body)
        schema = self.store.schema

        def update(tx: Tx, record: dict) -> SaveResult:
            raw_id = record.get("id", record.get("Id"))
            rid = normalize_id(raw_id)
            type_name = _type_of(record) or (
                schema.of_id(rid).name if rid and schema.of_id(rid) else None
            )
            if type_name is None or schema.get(type_name) is None:
                if raw_id in (None, ""):
                    return SaveResult(
                        None,
                        False,
                        [SaveError("MISSING_ARGUMENT", "Id not specified in an update call")],
                    )
                return SaveResult(
                    None, False, [SaveError("INVALID_TYPE", "Must send a concrete entity type.")]
                )
            return tx.save(type_name, "update", record, record_id=raw_id)

        # salesforce_lost_write: answered as saved, then undone (a Flow reverting the values).
        lost = self.state.take_fault("salesforce_lost_write") is not None
        try:
            with self.tx() as tx:
                work = [(lambda r=r: update(tx, r), False) for r in records]
                answer = self._collection(tx, work, bool(body.get("allOrNone")))
                if lost:
                    raise _Undone(answer)
        except _Undone as undone:
            return undone.answer
        return answer

    def collections_upsert(
        self, version: str, type_name: str, field: str, body: JsonBody = None
    ) -> list[dict]:
        records = _records_of(body)
        obj = self.store.schema.require(type_name)
        fd = obj.field(field)
        if fd is None or not (fd.external_id or fd.name == "Id"):
            raise SalesforceError(
                400, "INVALID_FIELD", f"Field {field} is not an external id field on {obj.name}"
            )
        for record in records:
            if (_type_of(record) or obj.name).lower() != obj.name.lower():
                raise SalesforceError(400, "INVALID_TYPE", "All records must be of one type.")
        keys = [
            index_key(fd, next((v for k, v in r.items() if k.lower() == fd.name.lower()), None))
            for r in records
        ]
        repeated = {k for k in keys if k is not None and keys.count(k) > 1}

        def upsert(tx: Tx, record: dict, key: str | None) -> SaveResult:
            if key in repeated:
                value = next(v for k, v in record.items() if k.lower() == fd.name.lower())
                error = SaveError(
                    "DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", (fd.name,)
                )
                return SaveResult(None, False, [error])
            return tx.save(obj.name, "upsert", record, ext_field=fd.name)

        with self.tx() as tx:
            work = [
                (lambda r=r, k=k: upsert(tx, r, k), True)
                for r, k in zip(records, keys, strict=True)
            ]
            return self._collection(tx, work, bool(body.get("allOrNone")))

    def collections_delete(self, version: str, request: Request) -> list[dict]:
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        if len(ids) > COLLECTION_LIMIT:
            _records_of({"records": ids})  # raises EXCEEDED_ID_LIMIT
        all_or_none = request.query_params.get("allOrNone", "").lower() == "true"
        schema = self.store.schema

        def delete(tx: Tx, raw: str) -> SaveResult:
            rid = normalize_id(raw)
            obj = schema.of_id(rid) if rid else None
            if obj is None:
                error = SaveError("MALFORMED_ID", f"malformed id {raw}")
                return SaveResult(None, False, [error])
            return tx.save(obj.name, "delete", {}, record_id=rid)

        with self.tx() as tx:
            work = [(lambda i=i: delete(tx, i), False) for i in ids]
            return self._collection(tx, work, all_or_none)

    def collections_retrieve(
        self, version: str, type_name: str, request: Request, body: JsonBody = None
    ) -> list[dict | None]:
        obj = self.store.schema.require(type_name)
        if request.method == "POST" and isinstance(body, dict):
            ids, fields = body.get("ids") or [], body.get("fields") or []
        else:
            ids = [i for i in request.query_params.get("ids", "").split(",") if i]
            fields = _fields_param(request) or []
        if not fields:
            raise SalesforceError(400, "MISSING_ARGUMENT", "fields parameter is required")
        if len(ids) > RETRIEVE_LIMIT:
            raise SalesforceError(400, "EXCEEDED_ID_LIMIT", f"more than {RETRIEVE_LIMIT} ids")
        with self.store.transaction() as tx:
            found = tx.fetch([normalize_id(i) or "" for i in ids])
        out: list[dict | None] = []
        for raw in ids:
            rec = found.get(normalize_id(raw) or "")
            ok = rec is not None and rec["_type"] == obj.name and not rec.get("IsDeleted")
            out.append(full_record(obj, rec, version[1:], fields) if ok else None)
        return out


def _fields_param(request: Request) -> list[str] | None:
    raw = request.query_params.get("fields")
    return [f.strip() for f in raw.split(",") if f.strip()] if raw else None


# ------------------------------------------------------------- Bulk API 2.0 (docs/salesforce.md §5)


class _Jobs:
    """Ingest or query jobs: SQLite rows in salesforce_jobs, processed on UploadComplete (ingest)
    or creation (query), after `salesforce_bulk_delay_s` seconds when that is set."""

    def __init__(self, org: _Org, kind: str):
        self.org, self.kind = org, kind
        self.state, self.store = org.state, org.store

    def _row(self, tx: Tx, job_id: str) -> dict:
        row = tx.conn.execute(
            "SELECT * FROM salesforce_jobs WHERE id = ? AND kind = ?", (job_id, self.kind)
        ).fetchone()
        if row is None:
            raise not_found()
        job = dict(row)
        job["info"] = json.loads(job["info"])
        job["results"] = json.loads(job["results"]) if job["results"] else None
        return self._settle(tx, job)

    def _save(self, tx: Tx, job: dict) -> None:
        job["info"]["systemModstamp"] = _stamp()
        tx.conn.execute(
            "UPDATE salesforce_jobs SET info = ?, upload = ?, results = ?, ready_at = ? "
            "WHERE id = ?",
            (
                json.dumps(job["info"]),
                job["upload"],
                json.dumps(job["results"]) if job["results"] is not None else None,
                job["ready_at"],
                job["id"],
            ),
        )

    def _settle(self, tx: Tx, job: dict) -> dict:
        """Process a job whose delay has passed; a waiting job reports InProgress."""
        info = job["info"]
        if info["state"] != "UploadComplete" or job["ready_at"] is None:
            return job
        if time.time() < job["ready_at"]:
            return {**job, "info": {**info, "state": "InProgress"}}
        started = time.monotonic()
        if self.kind == "ingest":
            results = process_ingest(tx, info, job["upload"])
            self._count_batches(results.get("_processed", 0))
        else:
            results = self._run_query(tx, info)
        error = results.pop("_error", None)
        info["state"] = "Failed" if error else "JobComplete"
        if error:
            info["errorMessage"] = error
        info["numberRecordsProcessed"] = results.pop("_processed", 0)
        if self.kind == "ingest":
            info["numberRecordsFailed"] = results.pop("_failed", 0)
        info["totalProcessingTime"] = int((time.monotonic() - started) * 1000)
        job["results"], job["ready_at"] = results, None
        self._save(tx, job)
        return job

    def _count_batches(self, records: int) -> None:
        limiter = self.state.limiter("salesforce_bulk_batches", DAILY_BULK_BATCHES, 86_400.0)
        for _ in range(max(1, math.ceil(records / BULK_BATCH_RECORDS))):
            limiter.hit(time.monotonic())

    def _run_query(self, tx: Tx, info: dict) -> dict:
        q = parse_soql(info["query"], tx.schema)
        result = run_query(tx, q, info["operation"] == "queryAll")
        rows = [render_csv_row(result, r) for r in result.records]
        return {"header": [p.text for p in q.fields], "rows": rows, "_processed": len(rows)}

    def _public(self, job: dict, counts: bool = True) -> dict:
        info = dict(job["info"])
        if not counts:
            for key in (
                "numberRecordsProcessed",
                "numberRecordsFailed",
                "retries",
                "totalProcessingTime",
                "apiActiveProcessingTime",
                "apexProcessingTime",
            ):
                info.pop(key, None)
        return info

    def create(self, version: str, body: JsonBody = None) -> dict:
        if self.kind == "ingest":
            spec = check_ingest_spec(self.store.schema, body)
        else:
            spec = self._query_spec(body)
        delay = float(self.state.settings["salesforce_bulk_delay_s"])
        with self.org.tx() as tx:
            job_id, _ = tx._next_id(JOB_PREFIX)
            info = job_info(self.kind, job_id, spec, version[1:], datetime.now(UTC))
            if self.kind == "query":
                info["query"] = spec["query"]
            ready_at = None if self.kind == "ingest" else time.time() + delay
            tx.conn.execute(
                "INSERT INTO salesforce_jobs (id, kind, info, ready_at) VALUES (?, ?, ?, ?)",
                (job_id, self.kind, json.dumps(info), ready_at),
            )
            job = {
                "id": job_id,
                "info": info,
                "upload": None,
                "results": None,
                "ready_at": ready_at,
            }
            if self.kind == "query" and delay <= 0:
                self._settle(tx, job)
                # The creation answer (docs/salesforce.md §5).
                job["info"]["state"] = "UploadComplete"
        return self._public(job, counts=False)

    def _query_spec(self, body: Any) -> dict:
        if not isinstance(body, dict) or body.get("operation") not in ("query", "queryAll"):
            raise SalesforceError(400, "INVALIDJOB", "operation must be query or queryAll")
        q = parse_soql(body.get("query"), self.store.schema)
        if q.count:
            raise SalesforceError(400, "INVALIDJOB", "Aggregate queries are not supported")
        limiter = self.state.limiter("salesforce_bulk_query_jobs", DAILY_BULK_QUERY_JOBS, 86_400.0)
        if not limiter.hit(time.monotonic()):
            raise _limit_error("DailyBulkV2QueryJobs")
        return {**body, "object": q.obj.name}

    def list(self, version: str) -> dict:
        with self.org.tx() as tx:
            ids = [
                r["id"]
                for r in tx.conn.execute(
                    "SELECT id FROM salesforce_jobs WHERE kind = ? ORDER BY rowid", (self.kind,)
                )
            ]
            records = [self._public(self._row(tx, i), counts=False) for i in ids]
        return {"done": True, "records": records, "nextRecordsUrl": None}

    def get(self, version: str, job_id: str) -> dict:
        with self.org.tx() as tx:
            return self._public(self._row(tx, job_id))

    def upload(self, version: str, job_id: str, body: JsonBody = None) -> Response:
        data = body if isinstance(body, bytes | str) else b""
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        with self.org.tx() as tx:
            job = self._row(tx, job_id)
            if job["info"]["state"] != "Open" or job["upload"] is not None:
                raise SalesforceError(
                    409,
                    "INVALIDJOBSTATE",
                    "Job state is not Open, or data was already uploaded for this job",
                )
            job["upload"] = text
            self._save(tx, job)
        return Response(status_code=201)

    def set_state(self, version: str, job_id: str, body: JsonBody = None) -> dict:
        wanted = body.get("state") if isinstance(body, dict) else None
        with self.org.tx() as tx:
            job = self._row(tx, job_id)
            info = job["info"]
            if wanted == "UploadComplete" and self.kind == "ingest" and info["state"] == "Open":
                info["state"] = "UploadComplete"
                delay = float(self.state.settings["salesforce_bulk_delay_s"])
                job["ready_at"] = time.time() + delay
                self._save(tx, job)
                answer = self._public(job)
                if delay <= 0:
                    self._settle(tx, job)
                return answer
            if wanted == "Aborted" and info["state"] not in TERMINAL_STATES:
                info["state"] = "Aborted"
                job["ready_at"] = None
                job["results"] = {
                    "successful": "",
                    "failed": "",
                    "unprocessed": unprocessed_csv(info, job["upload"]),
                }
                self._save(tx, job)
                return self._public(job)
            raise SalesforceError(
                409, "INVALIDJOBSTATE", f"Cannot change job state from {info['state']} to {wanted}"
            )

    def delete(self, version: str, job_id: str) -> Response:
        with self.org.tx() as tx:
            job = self._row(tx, job_id)
            if job["info"]["state"] not in TERMINAL_STATES | {"UploadComplete"}:
                raise SalesforceError(409, "INVALIDJOBSTATE", "Job must be closed to be deleted")
            tx.conn.execute("DELETE FROM salesforce_jobs WHERE id = ?", (job_id,))
        return Response(status_code=204)

    def results(self, version: str, job_id: str, results: str) -> Response:
        kinds = {
            "successfulresults": "successful",
            "failedresults": "failed",
            "unprocessedrecords": "unprocessed",
        }
        kind = kinds.get(results.lower())
        if kind is None:
            raise not_found()
        with self.org.tx() as tx:
            job = self._row(tx, job_id)
        if job["info"]["state"] not in TERMINAL_STATES:
            raise SalesforceError(409, "INVALIDJOBSTATE", "Job is not complete")
        return _csv_response((job["results"] or {}).get(kind, ""))

    def query_results(self, version: str, job_id: str, request: Request) -> Response:
        with self.org.tx() as tx:
            job = self._row(tx, job_id)
        if job["info"]["state"] != "JobComplete":
            raise SalesforceError(409, "INVALIDJOBSTATE", "Job is not complete")
        raw_max = request.query_params.get("maxRecords") or str(BULK_QUERY_PAGE)
        locator = request.query_params.get("locator")
        offset = decode_locator(locator) if locator else 0
        if not raw_max.isdigit() or int(raw_max) < 1 or offset is None:
            raise SalesforceError(
                400,
                "INVALIDLOCATOR" if offset is None else "INVALIDJOB",
                "Invalid locator or maxRecords",
            )
        info, results = job["info"], job["results"]
        rows = results["rows"][offset : offset + int(raw_max)]
        end = offset + len(rows)
        text = csv_text(
            [results["header"], *rows],
            LINE_ENDINGS[info["lineEnding"]],
            DELIMITERS[info["columnDelimiter"]],
        )
        headers = {
            "Sforce-Locator": encode_locator(end) if end < len(results["rows"]) else "null",
            "Sforce-NumberOfRecords": str(len(rows)),
        }
        return _csv_response(text, headers)


def _stamp() -> str:
    return fmt_datetime(datetime.now(UTC))


# ---------------------------------------------------------------- convertLead, client side

# LeadConvert's elements in the WSDL's order (strict SOAP stacks want that order).
_LEAD_CONVERT_FIELDS = (
    "accountId",
    "contactId",
    "convertedStatus",
    "doNotCreateOpportunity",
    "leadId",
    "opportunityId",
    "opportunityName",
    "overwriteLeadSource",
    "ownerId",
    "sendNotificationEmail",
)


def convert_lead(
    sf,
    lead_id: str,
    *,
    converted_status: str = "Closed - Converted",
    account_id: str | None = None,
    contact_id: str | None = None,
    create_opportunity: bool = True,
    opportunity_name: str | None = None,
    owner_id: str | None = None,
    overwrite_lead_source: bool = False,
    send_notification_email: bool = False,
) -> dict:
    """Convert one Lead with a simple_salesforce.Salesforce client (see convert_leads)
    -> {success, leadId, accountId, contactId, opportunityId, errors}."""
    conversion = {
        "leadId": lead_id,
        "convertedStatus": converted_status,
        "accountId": account_id,
        "contactId": contact_id,
        "doNotCreateOpportunity": not create_opportunity,
        "opportunityName": opportunity_name,
        "ownerId": owner_id,
        "overwriteLeadSource": overwrite_lead_source,
        "sendNotificationEmail": send_notification_email,
    }
    return convert_leads(sf, [conversion])[0]


def convert_leads(sf, conversions: list[dict]) -> list[dict]:
    """The SOAP partner API's convertLead, as an integration calls it (simple-salesforce has no
    such method): POST to /services/Soap/u/<version> with the client's session id.

    Each conversion is a dict of LeadConvert fields (leadId, convertedStatus, accountId, ...;
    None leaves one out) -> one result dict per lead, in order. A SOAP Fault raises
    simple-salesforce's exception for it (content: [{"errorCode", "message"}], as REST's).
    """
    items = []
    for conversion in conversions:
        unknown = set(conversion) - set(_LEAD_CONVERT_FIELDS)
        if unknown:
            raise ValueError(f"not LeadConvert fields: {sorted(unknown)}")
        items.append(
            "<leadConverts>"
            + "".join(
                f"<{name}>{_soap_literal(conversion[name])}</{name}>"
                for name in _LEAD_CONVERT_FIELDS
                if conversion.get(name) is not None
            )
            + "</leadConverts>"
        )
    envelope = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" '
        f'xmlns:urn="{PARTNER}"><soapenv:Header><urn:SessionHeader><urn:sessionId>'
        f"{xml_escape(sf.session_id)}</urn:sessionId></urn:SessionHeader></soapenv:Header>"
        f'<soapenv:Body><convertLead xmlns="{PARTNER}">{"".join(items)}</convertLead>'
        "</soapenv:Body></soapenv:Envelope>"
    )
    url = f"https://{sf.sf_instance}/services/Soap/u/{sf.sf_version}"
    headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "convertLead"}
    response = sf.session.post(url, data=envelope.encode(), headers=headers)
    try:
        root = ET.fromstring(response.content)
    except ET.ParseError:
        root = None
    answer = _soap_child(root, "Body", "convertLeadResponse") if root is not None else None
    if response.status_code != 200 or answer is None:
        raise _soap_exception(url, response, root)
    return [_convert_result(r) for r in answer if _local(r.tag) == "result"]


def _soap_literal(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else xml_escape(str(value))


def _convert_result(result: ET.Element) -> dict:
    errors = [
        {
            "statusCode": _soap_value(e, "statusCode"),
            "message": _soap_value(e, "message"),
            "fields": [f.text or "" for f in e if _local(f.tag) == "fields"],
        }
        for e in result
        if _local(e.tag) == "errors"
    ]
    out = {"success": _soap_value(result, "success") == "true"}
    for name in ("leadId", "accountId", "contactId", "opportunityId"):
        out[name] = _soap_value(result, name) or None
    return out | {"errors": errors}


def _soap_exception(url: str, response, root: ET.Element | None) -> Exception:
    """simple-salesforce's exception for a SOAP Fault (or any other unexpected answer)."""
    from simple_salesforce.exceptions import (
        SalesforceExpiredSession,
        SalesforceGeneralError,
        SalesforceMalformedRequest,
        SalesforceRefusedRequest,
    )

    fault = _soap_child(root, "Body", "Fault") if root is not None else None
    if fault is None:
        return SalesforceGeneralError(url, response.status_code, "convertLead", response.text)
    faultcode = _soap_value(fault, "faultcode") or ""
    code = faultcode.partition(":")[2] or faultcode
    message = _soap_value(fault, "faultstring") or ""
    content = [{"errorCode": code, "message": message}]
    kind = {
        "INVALID_SESSION_ID": SalesforceExpiredSession,
        "REQUEST_LIMIT_EXCEEDED": SalesforceRefusedRequest,
        "Client": SalesforceMalformedRequest,
    }.get(code, SalesforceGeneralError)
    return kind(url, response.status_code, "convertLead", content)


# ---------------------------------------------------------------- seeding


def seed(state: SandboxState, spec: world.WorldSpec, accounts: list, truth: list[dict]) -> dict:
    """The world's CRM in Salesforce (like seed._seed_crm does for HubSpot); returns counts.

    Accounts for every world account; a Lead for most sign-ups (and everyone who met sales).
    A meeting is an Event; a deal converts the Lead into a Contact at its Account with an
    Opportunity (Closed Won when won) and an OpportunityContactRole, and moves the Lead's Events
    to the Contact, as conversion does. Unconverted leads keep Events with WhoId = the Lead.
    `truth` rows are those seed.build writes (email, names, account_domain, free_email,
    signup_at, meeting_at, deal_created_at, won_at, amount).
    """
    rng = world.rng_for(spec, "salesforce")
    end = spec.end
    store = SalesforceStore(state)
    begin = datetime.combine(spec.start, datetime.min.time(), UTC) - timedelta(days=30)
    counts = dict.fromkeys(
        (
            "accounts",
            "leads",
            "converted_leads",
            "contacts",
            "events",
            "opportunities",
            "won_opportunities",
        ),
        0,
    )
    by_domain = {a.domain: a for a in accounts}

    def happened(t: datetime | None) -> bool:
        return t is not None and t < end

    with store.transaction() as tx:

        def make(type_name: str, values: dict) -> str:
            result = tx.save(type_name, "create", values, mode="system")
            if result.errors:
                raise result.errors[0].to_error()
            return result.id

        account_ids = {}
        for a in accounts:
            account_ids[a.domain] = make(
                "Account",
                {
                    "Name": a.name,
                    "Website": f"https://{a.domain}",
                    "NumberOfEmployees": a.employees,
                    "Industry": a.industry,
                    "BillingCountry": a.country,
                    "Type": "Prospect",
                    "CreatedDate": _iso(begin),
                },
            )
        counts["accounts"] = len(account_ids)
        for t in truth:
            met = happened(t["meeting_at"])
            if not (rng.random() < 0.9 or met):
                continue  # form capture misses some sign-ups
            account = by_domain.get(t["account_domain"])
            status = rng.choice(["Open - Not Contacted", "Working - Contacted"])
            lead_id = make(
                "Lead",
                {
                    "FirstName": t["first_name"],
                    "LastName": t["last_name"],
                    "Email": t["email"],
                    "Company": "[not provided]"
                    if t["free_email"] or account is None
                    else account.name,
                    "LeadSource": "Product Sign-up",
                    "Status": "Working - Contacted" if met else status,
                    "CreatedDate": _iso(t["signup_at"] + timedelta(minutes=rng.randint(1, 90))),
                },
            )
            counts["leads"] += 1
            who = lead_id
            if happened(t["deal_created_at"]):
                who = _convert(tx, make, t, lead_id, account_ids[t["account_domain"]], end)
                counts["converted_leads"] += 1
                counts["contacts"] += 1
                counts["opportunities"] += 1
                counts["won_opportunities"] += happened(t["won_at"])
            if met:
                start = t["meeting_at"]
                make(
                    "Event",
                    {
                        "Subject": "Intro call",
                        "Type": "Meeting",
                        "WhoId": who,
                        "WhatId": account_ids[t["account_domain"]] if who != lead_id else None,
                        "StartDateTime": _iso(start),
                        "DurationInMinutes": 30,
                        "CreatedDate": _iso(start - timedelta(days=rng.randint(1, 5))),
                    },
                )
                counts["events"] += 1
    return counts


def _convert(tx: Tx, make, t: dict, lead_id: str, account_id: str, end: datetime) -> str:
    """Convert a Lead at its deal's creation: Contact, Opportunity, contact role -> Contact id."""
    created = t["deal_created_at"]
    won = t["won_at"] is not None and t["won_at"] < end
    contact_id = make(
        "Contact",
        {
            "AccountId": account_id,
            "FirstName": t["first_name"],
            "LastName": t["last_name"],
            "Email": t["email"],
            "LeadSource": "Product Sign-up",
            "CreatedDate": _iso(created),
        },
    )
    opportunity_id = make(
        "Opportunity",
        {
            "AccountId": account_id,
            "Name": f"{t['account_domain']} - {t['first_name']} {t['last_name']}",
            "StageName": "Closed Won" if won else "Qualification",
            "CloseDate": (t["won_at"] if won else created + timedelta(days=30)).date().isoformat(),
            "Amount": t["amount"],
            "LeadSource": "Product Sign-up",
            "CreatedDate": _iso(created),
            "LastModifiedDate": _iso(t["won_at"] if won else created),
        },
    )
    make(
        "OpportunityContactRole",
        {
            "OpportunityId": opportunity_id,
            "ContactId": contact_id,
            "Role": "Decision Maker",
            "IsPrimary": True,
            "CreatedDate": _iso(created),
        },
    )
    # The one conversion the API and SalesforceStore.convert_lead run, on a clock set back to
    # the deal's creation so the Lead and Contact are stamped then.
    then = tx.at(created.astimezone(UTC).replace(microsecond=0))
    spec = LeadConvert(lead_id, account_id=account_id, contact_id=contact_id,
                       opportunity_id=opportunity_id)  # fmt: skip
    result = then.convert_lead(spec)
    if result.errors:
        raise result.errors[0].to_error()
    return contact_id


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
