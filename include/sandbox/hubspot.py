"""HubSpot CRM v3/v4 emulator, following docs/hubspot.md (cited by section).

Every request passes a gate before its endpoint: queued fault injection, Bearer auth, then the
rate limits (rolling 10 s window and daily budget; search has its own per-second limit and sends
no X-HubSpot-RateLimit headers). Storage and the CRM rules live in sandbox.hubspot_store.

`POST /crm/v3/objects/{type}/merge` merges two contacts, companies or deals as HubSpot now does:
into a NEW record with a new id, which both old ids keep pointing to (sandbox.hubspot_store has
the rules, and what an upsert or read by a merged-away email does).

Faults (`state.queue_fault(target, status, count)`): target "hubspot" answers the next requests
with that status; "hubspot_lost_write" answers one batch upsert/update as written and undoes it;
"hubspot_record_error" refuses one input of the next upsert/update batch with a per-record 207
error. Setting `hubspot_latency_ms` delays every request by a random 0..N ms.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from sandbox import hubspot_store
from sandbox.hubspot_store import (
    ASSOCIATION_TYPES,
    ASSOCIATIONS_PAGE,
    DEFAULT_ASSOCIATION_TYPE,
    HubSpotError,
    HubSpotStore,
    InvalidValue,
    Issue,
    Record,
    StoreTx,
    association_label,
    canonical_type,
    coerce_value,
    decode_after,
    encode_after,
    now_iso,
    singular,
    validation_error,
    validation_message,
)
from sandbox.state import SandboxState

__all__ = ["HubSpotStore", "router"]

BATCH_LIMIT = 100  # batch upsert/create/update/read inputs (docs/hubspot.md §3, §4)
ASSOCIATION_BATCH_LIMIT = 1000  # v4 associations batch read inputs (docs/hubspot.md §7)
LIST_MAX_LIMIT = 100
SEARCH_BODY_LIMIT = 3000  # characters (docs/hubspot.md §5)
JsonBody = Annotated[dict[str, Any], Body()]  # invalid JSON -> 400 in HubSpot's shape (see _Gate)

_RATE_MESSAGES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "DAILY": "You have reached your daily limit.",
    "SECONDLY": "You have reached your secondly limit.",
}
_FAULT_CATEGORIES = {
    400: "VALIDATION_ERROR",
    401: "INVALID_AUTHENTICATION",
    403: "MISSING_SCOPES",
    404: "OBJECT_NOT_FOUND",
    409: "CONFLICT",
    423: "LOCKED",
    477: "MIGRATION_IN_PROGRESS",
}
_NO_CREDENTIALS = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def router(state: SandboxState) -> APIRouter:
    """The HubSpot routes, all behind the gate (faults, auth, rate limits)."""
    store = HubSpotStore(state)
    api = APIRouter(route_class=_gated_route(_Gate(state)))
    _object_routes(api, store)
    _property_routes(api, store)
    _association_routes(api, store)
    return api


# ---------------------------------------------------------------- the gate


class _DailyCounter:
    """Requests per UTC day (HubSpot resets at the account's local midnight; the sandbox is UTC)."""

    def __init__(self):
        self._day, self.used = None, 0
        self._lock = threading.Lock()

    def _roll(self) -> None:
        today = datetime.now(UTC).date()
        if today != self._day:
            self._day, self.used = today, 0

    def remaining(self, limit: int) -> int:
        with self._lock:
            self._roll()
            return max(0, limit - self.used)

    def take(self) -> None:
        with self._lock:
            self._roll()
            self.used += 1


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, math.ceil((midnight - now).total_seconds()))


@dataclass
class _Admission:
    refusal: Response | None
    headers: dict[str, str]


class _Gate:
    """Fault injection, authentication and rate limiting, in that order."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.daily = _DailyCounter()

    async def __call__(
        self, request: Request, handler: Callable[[Request], Awaitable[Response]], search: bool
    ) -> Response:
        correlation_id = str(uuid.uuid4())
        hubspot_store.clock_offset_s = self.state.clock_offset_s
        await self.state.latency("hubspot")
        fault = self.state.take_fault("hubspot")
        if fault is not None:
            return _fault_response(fault, correlation_id)
        problem = self._auth_problem(request)
        if problem:
            return _error(HubSpotError(401, problem, "INVALID_AUTHENTICATION"), correlation_id)
        admission = self._admit_search(correlation_id) if search else self._admit(correlation_id)
        if admission.refusal is not None:
            self.state.count("hubspot 429")
            return admission.refusal
        # Tests and benchmarks read these to assert how many calls of each kind a client made.
        self.state.count(f"hubspot {request.method} {request.url.path}")
        try:
            response = await handler(request)
        except HubSpotError as error:
            response = _error(error, correlation_id)
        except RequestValidationError as invalid:
            response = _error(_invalid_request(invalid), correlation_id)
        response.headers.update(admission.headers)
        response.headers["X-HubSpot-Correlation-Id"] = correlation_id
        return response

    def _auth_problem(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _NO_CREDENTIALS
        expected = self.state.credentials["hubspot"]["access_token"]
        if not secrets.compare_digest(token.strip().encode(), expected.encode()):
            return "The access token provided is invalid or has expired."
        return None

    def _admit(self, correlation_id: str) -> _Admission:
        """Rolling window then daily budget; headers report what is left (docs/hubspot.md §8)."""
        settings = self.state.settings
        # The window is 10 s as at HubSpot; tests may shorten it to exercise client retries fast.
        window_s = float(settings["hubspot_rate_window_s"])
        limit = int(settings["hubspot_requests_per_10s"])
        daily_limit = int(settings["hubspot_daily_limit"])
        limiter = self.state.limiter(f"hubspot_rolling_{window_s:g}s", limit, window_s)
        headers = {
            "X-HubSpot-RateLimit-Max": str(limit),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(window_s * 1000)),
            "X-HubSpot-RateLimit-Daily": str(daily_limit),
        }
        if self.daily.remaining(daily_limit) <= 0:
            refusal = _rate_limited("DAILY", correlation_id, _seconds_to_midnight())
        elif not limiter.hit(time.monotonic()):
            refusal = _rate_limited("TEN_SECONDLY_ROLLING", correlation_id, math.ceil(window_s))
        else:
            self.daily.take()
            refusal = None
        headers["X-HubSpot-RateLimit-Remaining"] = str(limiter.remaining(time.monotonic()))
        headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(self.daily.remaining(daily_limit))
        if refusal is not None:
            refusal.headers.update(headers)
        return _Admission(refusal, headers)

    def _admit_search(self, correlation_id: str) -> _Admission:
        """Search: its own per-second limit, counts toward the daily budget, no headers
        (docs/hubspot.md §5)."""
        settings = self.state.settings
        limiter = self.state.limiter(
            "hubspot_search", int(settings["hubspot_search_per_second"]), 1.0
        )
        if self.daily.remaining(int(settings["hubspot_daily_limit"])) <= 0:
            return _Admission(_rate_limited("DAILY", correlation_id, _seconds_to_midnight()), {})
        if not limiter.hit(time.monotonic()):
            return _Admission(_rate_limited("SECONDLY", correlation_id, 1), {})
        self.daily.take()
        return _Admission(None, {})


def _gated_route(gate: _Gate) -> type[APIRoute]:
    class GatedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()
            search = self.path.endswith("/search")

            async def gated(request: Request) -> Response:
                return await gate(request, handler, search)

            return gated

    return GatedRoute


def _error(error: HubSpotError, correlation_id: str) -> JSONResponse:
    return JSONResponse(error.body(correlation_id), status_code=error.status)


def _rate_limited(policy: str, correlation_id: str, retry_after: int) -> JSONResponse:
    body = {
        "status": "error",
        "message": _RATE_MESSAGES[policy],
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id,
        "policyName": policy,
        "requestId": str(uuid.uuid4()),
    }
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})


def _fault_response(status: int, correlation_id: str) -> Response:
    """An injected failure, shaped like HubSpot's own answer for that status."""
    if status == 429:
        return _rate_limited("TEN_SECONDLY_ROLLING", correlation_id, 1)
    category = _FAULT_CATEGORIES.get(status, "INTERNAL_ERROR" if status >= 500 else "ERROR")
    message = "internal error" if status >= 500 else f"injected fault {status}"
    response = _error(HubSpotError(status, message, category), correlation_id)
    if status == 477:  # migration in progress: HubSpot sends Retry-After (docs/hubspot.md §9)
        response.headers["Retry-After"] = "1"
    return response


def _invalid_request(invalid: RequestValidationError) -> HubSpotError:
    first = (invalid.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return HubSpotError(
        400, f"Invalid input JSON: {first.get('msg', 'invalid request')} at {where}"
    )


# ---------------------------------------------------------------- shapes


def _batch(started: str, results: list, errors: list, ok_status: int) -> JSONResponse:
    """Batch response: ok_status when all applied, 207 with numErrors/errors otherwise
    (docs/hubspot.md §3)."""
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    body |= {"startedAt": started, "completedAt": now_iso()}
    if errors:
        body |= {"numErrors": len(errors), "errors": errors}
    return JSONResponse(body, status_code=207 if errors else ok_status)


def _record_error(category: str, message: str, context: dict, details=(), sub=None) -> dict:
    """A StandardError inside a batch response; `context` says which inputs it concerns."""
    return {
        "status": "error",
        "category": category,
        "subCategory": sub,
        "message": message,
        "context": context,
        "errors": list(details),
        "links": {},
    }


def _issues_error(issues: list[Issue], context: dict) -> dict:
    details = [i.detail() for i in issues]
    return _record_error("VALIDATION_ERROR", validation_message(issues), context, details)


def _not_found_error(object_type: str, missing: list[str]) -> dict:
    noun = singular(object_type).upper()
    message = (
        f"Could not get some {noun} objects, they may be deleted or not exist. "
        "Check that ids are valid."
    )
    return _record_error("OBJECT_NOT_FOUND", message, {"ids": missing})


def _inputs(body: dict, limit: int) -> list[dict]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise HubSpotError(400, "Invalid input JSON: 'inputs' must be a list of objects.")
    if len(inputs) > limit:
        raise HubSpotError(400, f"Too many inputs: {len(inputs)}; the limit is {limit}.")
    return inputs


def _properties_of(item: dict) -> dict:
    props = item.get("properties") or {}
    if not isinstance(props, dict):
        raise HubSpotError(400, "Invalid input JSON: 'properties' must be an object.")
    return props


def _query_list(request: Request, name: str) -> list[str] | None:
    """A list query parameter, repeated (`?p=a&p=b`, the SDK's way) or comma-separated."""
    raw = request.query_params.getlist(name)
    if not raw:
        return None
    return [part for value in raw for part in value.split(",") if part]


# ---------------------------------------------------------------- keyed inputs


@dataclass
class _Keyed:
    """A batch input addressed by an id: the id as sent, its property, and the stored form."""

    raw_id: str
    id_property: str
    key: str | None  # None when the id cannot be a value of id_property (so nothing matches)
    properties: dict


def _keyed_inputs(tx: StoreTx, object_type: str, inputs: list[dict], top_id_property=None):
    """Parse inputs with ids: idProperty must be unique (or hs_object_id); no duplicate ids."""
    defs, keyed = tx.defs(object_type), []
    for item in inputs:
        id_property = item.get("idProperty") or top_id_property or "hs_object_id"
        defn = defs.get(id_property)
        if id_property != "hs_object_id" and not (defn and defn.has_unique_value):
            raise HubSpotError(
                400,
                f"{id_property} is not a valid idProperty: use hs_object_id or a property "
                "with unique values.",
            )
        raw_id = item.get("id")
        if raw_id is None or str(raw_id) == "":
            raise HubSpotError(400, "Invalid input JSON: every input needs an 'id'.")
        keyed.append(
            _Keyed(str(raw_id), id_property, _key(defn, str(raw_id)), _properties_of(item))
        )
    seen, duplicates = set(), []
    for k in keyed:
        marker = (k.id_property, k.key if k.key is not None else k.raw_id)
        if marker in seen:
            duplicates.append(k.raw_id)
        seen.add(marker)
    if duplicates:
        raise HubSpotError(400, f"Duplicate IDs found in batch input: {duplicates}")
    return keyed


def _key(defn, raw_id: str) -> str | None:
    if defn is None or defn.name == "hs_object_id":
        return raw_id if raw_id.isdigit() else None
    try:
        return coerce_value(defn, raw_id)
    except InvalidValue:  # an id that cannot be a value (e.g. a malformed email) matches nothing
        return None


def _resolve(tx: StoreTx, object_type: str, keyed: list[_Keyed]) -> list[Record | None]:
    """The existing record for each keyed input (None when absent)."""
    wanted: dict[str, list[str]] = {}
    for k in keyed:
        if k.key is not None:
            wanted.setdefault(k.id_property, []).append(k.key)
    found = {prop: tx.find(object_type, prop, keys) for prop, keys in wanted.items()}
    records = tx.fetch(object_type, [i for ids in found.values() for i in ids.values()])
    return [records.get(found.get(k.id_property, {}).get(k.key)) for k in keyed]


def _check_schema(tx: StoreTx, object_type: str, property_maps: list[dict]) -> None:
    issues = tx.schema_issues(object_type, (n for props in property_maps for n in props))
    if issues:
        raise validation_error(issues)


# ---------------------------------------------------------------- object endpoints


def _upsert(tx: StoreTx, object_type: str, inputs: list[dict]) -> tuple[list, list]:
    """Batch upsert (docs/hubspot.md §3): validation failures per record (207), the rest
    created or updated."""
    keyed = _keyed_inputs(tx, object_type, inputs)
    _check_schema(tx, object_type, [k.properties for k in keyed])
    written: dict[int, Record] = {}  # so two inputs reaching one record see each other's writes
    results, errors = [], []
    for k, record in zip(keyed, _resolve(tx, object_type, keyed), strict=True):
        record = written.get(record.id, record) if record else None
        if record is None and k.id_property == "hs_object_id":
            errors.append(_not_found_error(object_type, [k.raw_id]))  # ids can't be chosen
            continue
        values = k.properties
        if k.id_property != "hs_object_id":  # the input id is the key value: it wins
            values = {**values, k.id_property: k.raw_id}
        clean, issues = tx.coerce(object_type, values)
        if record is None:
            issues += tx.missing_required(object_type, clean)
        if issues:
            errors.append(_issues_error(issues, {"ids": [k.raw_id]}))
            continue
        new = record is None
        record = tx.insert(object_type, clean) if new else tx.update(record, clean)
        written[record.id] = record
        results.append(record.to_api(tx.view(record, list(clean))) | {"new": new})
    return results, errors


def _update(tx: StoreTx, object_type: str, inputs: list[dict]) -> tuple[list, list]:
    """Batch update by record id (or idProperty): missing ids and bad values are 207 errors."""
    keyed = _keyed_inputs(tx, object_type, inputs)
    _check_schema(tx, object_type, [k.properties for k in keyed])
    results, errors, missing = [], [], []
    for k, record in zip(keyed, _resolve(tx, object_type, keyed), strict=True):
        if record is None:
            missing.append(k.raw_id)
            continue
        clean, issues = tx.coerce(object_type, k.properties)
        if issues:
            errors.append(_issues_error(issues, {"ids": [k.raw_id]}))
            continue
        record = tx.update(record, clean)
        results.append(record.to_api(tx.view(record, list(clean))))
    if missing:
        errors.append(_not_found_error(object_type, missing))
    return results, errors


def _create(tx: StoreTx, object_type: str, inputs: list[dict]) -> tuple[list, list]:
    """Batch create: 207 per record only when every input has a distinct objectWriteTraceId
    (the documented contract); otherwise any invalid record fails the whole batch (400)."""
    props = [_properties_of(item) for item in inputs]
    _check_schema(tx, object_type, props)
    links = [_inline_associations(object_type, item.get("associations")) for item in inputs]
    traces = [item.get("objectWriteTraceId") for item in inputs]
    traced = all(traces) and len(set(traces)) == len(traces)
    checked = []
    for values in props:
        clean, issues = tx.coerce(object_type, values)
        checked.append((clean, issues + tx.missing_required(object_type, clean)))
    if not traced and any(issues for _, issues in checked):
        raise validation_error([i for _, issues in checked for i in issues])
    results, errors = [], []
    for (clean, issues), trace, link in zip(checked, traces, links, strict=True):
        if issues:
            errors.append(_issues_error(issues, {"objectWriteTraceId": [str(trace)]}))
            continue
        record = tx.insert(object_type, clean)
        for to_type, to_id, type_id in link:
            tx.associate(object_type, to_type, [(record.id, to_id)], type_id)
        result = record.to_api(tx.view(record, list(clean)))
        results.append(result | ({"objectWriteTraceId": trace} if trace else {}))
    return results, errors


def _inline_associations(object_type: str, raw: Any) -> list[tuple[str, int, int]]:
    """`associations` of a create input -> [(to_type, to_id, type_id)]; 400 if malformed."""
    links = []
    for assoc in raw or []:
        to_id = str((assoc.get("to") or {}).get("id") or "")
        for spec in assoc.get("types") or []:
            type_id = spec.get("associationTypeId")
            category = spec.get("associationCategory") or "HUBSPOT_DEFINED"
            entry = ASSOCIATION_TYPES.get(type_id) if category == "HUBSPOT_DEFINED" else None
            if entry is None or entry[0] != object_type or not to_id.isdigit():
                raise HubSpotError(
                    400,
                    f"Invalid association from {object_type} to {to_id or '?'}: "
                    f"{category} type {type_id} (the sandbox knows the HubSpot-defined types).",
                )
            links.append((entry[1], int(to_id), type_id))
    return links


def _read(tx: StoreTx, object_type: str, body: dict) -> tuple[list, list]:
    """Batch read (docs/hubspot.md §4): found records in input order; one OBJECT_NOT_FOUND
    error for the rest."""
    keyed = _keyed_inputs(tx, object_type, _inputs(body, BATCH_LIMIT), body.get("idProperty"))
    requested = body.get("properties") or None
    results, missing, shown = [], [], set()
    for k, record in zip(keyed, _resolve(tx, object_type, keyed), strict=True):
        if record is None:
            missing.append(k.raw_id)
        elif record.id not in shown:
            shown.add(record.id)
            results.append(record.to_api(tx.view(record, requested)))
    return results, [_not_found_error(object_type, missing)] if missing else []


def _refused_inputs(state: SandboxState, body: dict) -> list[dict]:
    """RECORD_ERROR_FAULT: each queued "hubspot_record_error" fault takes the next input out of
    an upsert/update batch, answered as a per-record 207 error (the record stays unwritten)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        return []
    refused = []
    while inputs and state.take_fault("hubspot_record_error") is not None:
        item = inputs.pop(0)
        refused.append(
            _record_error(
                "LOCKED",
                "The record is being updated by another process; retry the request.",
                {"ids": [str(item.get("id") if isinstance(item, dict) else item)]},
            )
        )
    return refused


class _Undo(Exception):
    """Rolls back a batch that is answered as if it had been written."""


def _object_routes(api: APIRouter, store: HubSpotStore) -> None:
    def batch_endpoint(path: str, ok_status: int, work) -> None:
        @api.post(f"/crm/v3/objects/{{object_type}}/batch/{path}")
        def batch(object_type: str, body: JsonBody) -> JSONResponse:
            started, object_type = now_iso(), canonical_type(object_type)
            # LOST_WRITE_FAULT: answered as written, then undone (a workflow reverting it).
            lost = path in ("upsert", "update") and store.state.take_fault("hubspot_lost_write")
            refused = _refused_inputs(store.state, body) if path in ("upsert", "update") else []
            try:
                with store.transaction() as tx:
                    results, errors = work(tx, object_type, body)
                    if lost:
                        raise _Undo
            except _Undo:
                pass
            return _batch(started, results, refused + errors, ok_status)

    batch_endpoint("upsert", 200, lambda tx, t, body: _upsert(tx, t, _inputs(body, BATCH_LIMIT)))
    batch_endpoint("create", 201, lambda tx, t, body: _create(tx, t, _inputs(body, BATCH_LIMIT)))
    batch_endpoint("update", 200, lambda tx, t, body: _update(tx, t, _inputs(body, BATCH_LIMIT)))
    batch_endpoint("read", 200, _read)

    @api.post("/crm/v3/objects/{object_type}/search")
    def search(object_type: str, body: JsonBody) -> dict:
        object_type = canonical_type(object_type)
        if len(json.dumps(body, separators=(",", ":"))) > SEARCH_BODY_LIMIT:
            raise HubSpotError(
                400, f"Search request bodies are limited to {SEARCH_BODY_LIMIT} chars."
            )
        requested = body.get("properties") or None
        with store.transaction() as tx:
            total, page, next_offset = tx.search(object_type, body)
            results = [r.to_api(tx.view(r, requested)) for r in page]
        answer: dict[str, Any] = {"total": total, "results": results}
        if next_offset is not None:
            answer["paging"] = {"next": {"after": str(next_offset)}}
        return answer

    @api.post("/crm/v3/objects/{object_type}/merge")
    def merge(object_type: str, body: JsonBody) -> dict:
        """objectIdToMerge into primaryObjectId: the answer is a NEW record with a new id."""
        object_type = canonical_type(object_type)
        primary, secondary = body.get("primaryObjectId"), body.get("objectIdToMerge")
        with store.transaction() as tx:
            record = tx.merge(object_type, primary, secondary)
            return record.to_api(tx.view(record, None))

    @api.get("/crm/v3/objects/{object_type}")
    def get_page(object_type: str, request: Request, limit: int = 10, after: str = "0") -> dict:
        object_type = canonical_type(object_type)
        if not 1 <= limit <= LIST_MAX_LIMIT:
            raise HubSpotError(400, f"limit must be between 1 and {LIST_MAX_LIMIT}.")
        if not after.isdigit():
            raise HubSpotError(400, f"Invalid after: {after}")
        requested = _query_list(request, "properties")
        with store.transaction() as tx:
            page = tx.records(object_type, int(after), limit + 1)
            results = [r.to_api(tx.view(r, requested)) for r in page[:limit]]
        answer: dict[str, Any] = {"results": results}
        if len(page) > limit:
            cursor = str(page[limit - 1].id)  # the next page starts after the last id shown
            link = str(request.url.include_query_params(after=cursor))
            answer["paging"] = {"next": {"after": cursor, "link": link}}
        return answer

    @api.patch("/crm/v3/objects/{object_type}/{object_id}")
    def update_one(object_type: str, object_id: str, body: JsonBody, request: Request) -> dict:
        """Update one record by id (or idProperty), as a rep's edit in the UI does."""
        object_type = canonical_type(object_type)
        item = {"id": object_id, "properties": (body or {}).get("properties") or {}}
        id_property = request.query_params.get("idProperty")
        if id_property:
            item["idProperty"] = id_property
        with store.transaction() as tx:
            results, errors = _update(tx, object_type, [item])
        if errors:
            error = errors[0]
            status = 404 if error.get("category") == "OBJECT_NOT_FOUND" else 400
            raise HubSpotError(status, error.get("message", "update failed"),
                               error.get("category", "VALIDATION_ERROR"))  # fmt: skip
        return results[0]

    @api.get("/crm/v3/objects/{object_type}/{object_id}")
    def get_by_id(object_type: str, object_id: str, request: Request) -> dict:
        object_type = canonical_type(object_type)
        id_property = request.query_params.get("idProperty")
        with store.transaction() as tx:
            keyed = _keyed_inputs(tx, object_type, [{"id": object_id}], id_property)
            record = _resolve(tx, object_type, keyed)[0]
            if record is None:
                raise HubSpotError(
                    404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND"
                )
            return record.to_api(tx.view(record, _query_list(request, "properties")))


# ---------------------------------------------------------------- properties (docs/hubspot.md §6)


def _property_routes(api: APIRouter, store: HubSpotStore) -> None:
    base = "/crm/v3/properties/{object_type}"

    # Group routes first: otherwise "groups" would be taken for a property name.
    @api.get(base + "/groups")
    def list_groups(object_type: str) -> dict:
        with store.transaction() as tx:
            return {"results": tx.groups(canonical_type(object_type))}

    @api.post(base + "/groups", status_code=201)
    def create_group(object_type: str, body: JsonBody) -> dict:
        with store.transaction() as tx:
            return tx.create_group(canonical_type(object_type), body)

    @api.get(base + "/groups/{group_name}")
    def get_group(object_type: str, group_name: str) -> dict:
        with store.transaction() as tx:
            group = tx.group(canonical_type(object_type), group_name)
        if group is None:
            raise HubSpotError(404, f"Unable to find group {group_name}", "OBJECT_NOT_FOUND")
        return group

    @api.get(base)
    def list_properties(object_type: str) -> dict:
        with store.transaction() as tx:
            return {"results": [d.to_api() for d in tx.defs(canonical_type(object_type)).values()]}

    @api.post(base, status_code=201)
    def create_property(object_type: str, body: JsonBody) -> dict:
        with store.transaction() as tx:
            return tx.create_property(canonical_type(object_type), body).to_api()

    @api.get(base + "/{property_name}")
    def get_property(object_type: str, property_name: str) -> dict:
        with store.transaction() as tx:
            defn = tx.defs(canonical_type(object_type)).get(property_name)
        if defn is None:
            message = f"Unable to find property with name: {property_name}"
            raise HubSpotError(404, message, "OBJECT_NOT_FOUND")
        return defn.to_api()


# ------------------------------------------------------------- associations v4 (docs/hubspot.md §7)


def _association_page(from_id: str, linked: dict[int, list[int]], after: str | None) -> dict:
    """One input's result: its associated objects from `after`, with paging when more remain."""
    offset = decode_after(after) if after else 0
    targets = list(linked.items())
    to = [
        {
            "toObjectId": to_id,  # numeric on the wire, as HubSpot sends it
            "associationTypes": [
                {"category": "HUBSPOT_DEFINED", "typeId": t, "label": association_label(t)}
                for t in type_ids
            ],
        }
        for to_id, type_ids in targets[offset : offset + ASSOCIATIONS_PAGE]
    ]
    result: dict[str, Any] = {"from": {"id": from_id}, "to": to}
    if offset + ASSOCIATIONS_PAGE < len(targets):
        result["paging"] = {"next": {"after": encode_after(offset + ASSOCIATIONS_PAGE)}}
    return result


def _association_routes(api: APIRouter, store: HubSpotStore) -> None:
    @api.post("/crm/v4/associations/{from_type}/{to_type}/batch/read")
    def batch_read(from_type: str, to_type: str, body: JsonBody) -> JSONResponse:
        started = now_iso()
        from_type, to_type = canonical_type(from_type), canonical_type(to_type)
        inputs = _inputs(body, ASSOCIATION_BATCH_LIMIT)
        ids = [str(i.get("id") or "") for i in inputs]
        with store.transaction() as tx:
            linked = tx.associations(from_type, to_type, [int(i) for i in ids if i.isdigit()])
        results, errors = [], []
        for item, from_id in zip(inputs, ids, strict=True):
            mine = linked.get(int(from_id)) if from_id.isdigit() else None
            if mine:
                results.append(_association_page(from_id, mine, item.get("after")))
            else:
                errors.append(_no_associations(from_type, to_type, from_id))
        return _batch(started, results, errors, 200)

    @api.put("/crm/v4/objects/{from_type}/{from_id}/associations/default/{to_type}/{to_id}")
    def create_default(from_type: str, from_id: str, to_type: str, to_id: str) -> JSONResponse:
        started = now_iso()
        from_type, to_type = canonical_type(from_type), canonical_type(to_type)
        if not (from_id.isdigit() and to_id.isdigit()):
            raise HubSpotError(400, "Object ids must be numeric.")
        with store.transaction() as tx:
            tx.associate(from_type, to_type, [(int(from_id), int(to_id))])
        type_id = DEFAULT_ASSOCIATION_TYPE[(from_type, to_type)]
        results = [
            _default_result(from_id, to_id, type_id),
            _default_result(to_id, from_id, ASSOCIATION_TYPES[type_id][2]),
        ]
        return _batch(started, results, [], 200)


def _no_associations(from_type: str, to_type: str, from_id: str) -> dict:
    message = f"No {singular(to_type)} is associated with {singular(from_type)} {from_id}."
    return _record_error(
        "OBJECT_NOT_FOUND",
        message,
        {"fromObjectId": [from_id]},
        sub="crm.associations.NO_ASSOCIATIONS_FOUND",
    )


def _default_result(from_id: str, to_id: str, type_id: int) -> dict:
    spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
    return {"from": {"id": from_id}, "to": {"id": to_id}, "associationSpec": spec}
