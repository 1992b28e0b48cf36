"""HubSpot through hubspot-api-client: provisioning, diff-based contact upserts, reads.

Long because it is the whole HubSpot adapter: client, budgets, properties, batch upserts,
search past the 10,000 cap, merges, companies.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    SimplePublicObjectBatchInputUpsert,
)
from hubspot.crm.objects import Filter, FilterGroup, PublicObjectSearchRequest
from hubspot.crm.properties import PropertyCreate, PropertyGroupCreate

from pql import http
from pql.crm import Retargetable, SyncError
from pql.crm import sync as engine
from pql.crm.ledger import (
    MERGED,
    Since,
    changed,
    contact_fields,
    desired_accounts,
    edits_since,
    load_ledger,
    records,
    relocated,
    save_ledger,
    update_ledger,
)
from pql.crm.sync import FieldsMissing, Located, Recent
from pql.crm.targets import HubSpotTarget
from pql.frames import among
from pql.http import Budget
from pql.lake import Lake

log = logging.getLogger(__name__)

BATCH = 100  # HubSpot's maximum inputs per batch call
SEARCH_PAGE = 200  # HubSpot's maximum search page
SEARCH_CAP = 10_000  # HubSpot refuses `after` at or beyond this: slice by object id instead
# HubSpot counts a call when it arrives, this budget when it is sent: a quarter second of margin
# keeps the two windows from overlapping into a 429 at the edge (a 429 costs far more).
WINDOW_S = 10.25
SEARCH_WINDOW_S = 1.1  # the same for search's 5 a second
WORKERS = 4  # batch calls in flight at once (HubSpot limits the rate, not concurrency)
API_HOST = "https://api.hubapi.com"
RESULT_COLUMNS = ["email", "status", "http_status", "message", "transient", "hubspot_id",
                  "modified_at"]  # fmt: skip
DAILY_HEADER = "X-HubSpot-RateLimit-Daily-Remaining"


class HubSpotCrm(Retargetable):
    """The HubSpot adapter (pql.crm.Crm): the SDK client with its budgets and the daily calls
    HubSpot last said were left. The SDK's APIs are its attributes (`hs.crm.contacts...`).

    Every call this package makes first waits for the budget: at most `requests_per_10s` in
    any rolling 10 seconds (100 for most private apps, 190 on Professional/Enterprise) and 5
    searches a second, so 429s are the exception, not the pacing.
    """

    kind = "hubspot"
    label = "HubSpot"
    writes_by_record = False  # upserts by email

    def __init__(self, sdk: HubSpot, target: HubSpotTarget | None = None):
        self.sdk = sdk
        self.target = target or HubSpotTarget(kind="hubspot")
        self.budgets = {
            "api": Budget([(self.target.requests_per_10s, WINDOW_S)]),
            "search": Budget([(5, SEARCH_WINDOW_S)]),
        }
        self.daily_remaining: int | None = None  # from the last answer that said it

    def __getattr__(self, name: str):
        if name == "sdk":  # not yet set (a copy being made)
            raise AttributeError(name)
        return getattr(self.sdk, name)

    # --- the sync engine's operations (pql.crm.sync.People) ---

    def provision(self) -> None:
        ensure_properties(self, self.target)

    def recent(self, since: Since | None, scores: pd.DataFrame, ledger: pd.DataFrame) -> Recent:
        # Every contact HubSpot changed since the last run began, around our own last writes:
        # edits (for overwrite) and merges (a merge makes a new record), whichever the rule.
        if since is None:
            return Recent()
        values, holders, modified = modified_contacts(self, since, contact_fields(self.target))
        return Recent(values=values, holders=holders, modified=modified)

    def locate(self, emails: list[str], scores: pd.DataFrame) -> dict[str, Located]:
        fields = contact_fields(self.target)
        found = read_contacts(self, emails, [*fields, "hs_object_id"])
        return {e: Located(f"contacts/{v['hs_object_id']}", {f: v[f] for f in fields})
                for e, v in found.items() if v.get("hs_object_id")}  # fmt: skip

    def write(self, todo: pd.DataFrame, located: dict, scores: pd.DataFrame):
        return _write(self, todo, located)

    def read(self, where: dict[str, str]) -> dict[str, dict]:
        return read_contacts(self, list(where), contact_fields(self.target))

    # --- the pipeline's operations (pql.crm.Crm) ---

    def sync(
        self,
        lake: Lake,
        scores: pd.DataFrame,
        *,
        dry_run: bool = False,
        min_score_change: float | None = None,
    ) -> dict:
        # Yesterday's count is no guide: this run learns it from its first answer that says it.
        self.daily_remaining = None
        return engine.run(self, lake, scores, dry_run=dry_run, min_score_change=min_score_change)

    def sync_accounts(self, lake: Lake, accounts: pd.DataFrame) -> dict:
        return sync_accounts(self, lake, self.target, accounts)

    def read_accounts(self) -> pd.DataFrame:
        return read_companies(self)

    def pull_outcomes(self, since: datetime | None) -> dict:
        from pql.crm import hubspot_outcomes

        return hubspot_outcomes.pull(self, since)

    def create_tasks(self, leads: pd.DataFrame, rule, now: datetime, made: list) -> list:
        from pql.crm.hubspot_tasks import create_tasks

        return create_tasks(self, leads, rule, now, made=made)


def client(
    access_token: str, host: str | None = None, target: HubSpotTarget | None = None
) -> HubSpotCrm:
    """A HubSpot adapter for a private-app token; 429 and 5xx retried by the SDK with the HTTP
    layer's backoff (POSTs included). `host`: a proxy or the sandbox instead of HubSpot."""
    sdk = HubSpot(access_token=access_token, host=(host or API_HOST).rstrip("/"),
                  retry=http.sdk_retry())  # fmt: skip
    return HubSpotCrm(sdk, target)


def connect(target: HubSpotTarget, conn, **_options) -> HubSpotCrm:
    """The adapter for a connection (pql.connections.Conn): the private-app token in its
    password, its host (optional) instead of HubSpot's."""
    return client(conn.secret("the HubSpot private-app access token"), conn.host, target)


def limited(hs, kind: str = "api") -> None:
    """Wait until one more call of `kind` (api, search) fits HubSpot's rolling limits; count
    it against the daily calls HubSpot last said were left (an estimate between answers).
    A bare SDK client (a test's) is not paced."""
    budgets = getattr(hs, "budgets", None)
    if budgets:
        budgets[kind].acquire()
    if getattr(hs, "daily_remaining", None) is not None:
        hs.daily_remaining -= 1


def property_specs(target: HubSpotTarget) -> list[dict]:
    """The custom contact properties the sync writes, with HubSpot's type/fieldType pairs."""
    f = target.fields
    return [
        {"name": f.score, "label": "PQL score", "type": "number", "field_type": "number"},
        {
            "name": f.flag,
            "label": "PQL",
            "type": "bool",
            "field_type": "booleancheckbox",
            "options": [
                {"label": "Yes", "value": "true", "displayOrder": 0},
                {"label": "No", "value": "false", "displayOrder": 1},
            ],
        },
        {
            "name": f.qualified_at,
            "label": "PQL qualified at",
            "type": "datetime",
            "field_type": "date",
        },
        {"name": f.reasons, "label": "PQL reasons", "type": "string", "field_type": "textarea"},
        {
            "name": f.model_version,
            "label": "PQL model version",
            "type": "string",
            "field_type": "text",
        },
    ]


def ensure_properties(
    hs: HubSpot, target: HubSpotTarget, object_type: str = "contacts", specs: list | None = None
) -> list[str]:
    """Create the property group and any missing custom properties; returns what was created."""
    created = []
    limited(hs)
    resp = hs.crm.properties.groups_api.get_all(object_type=object_type, _preload_content=False)
    groups = {g["name"] for g in json.loads(resp.data).get("results") or []}
    daily = resp.headers.get(DAILY_HEADER)
    if daily is not None:  # private-app tokens only: OAuth apps are not sent it
        hs.daily_remaining = int(daily)
    if target.property_group not in groups:
        limited(hs)
        hs.crm.properties.groups_api.create(
            object_type=object_type,
            property_group_create=PropertyGroupCreate(
                name=target.property_group, label="Product-qualified lead", display_order=-1
            ),
        )
        created.append(f"group {target.property_group}")
    limited(hs)
    # Raw JSON: the SDK's models for a portal's hundreds of properties take a second of CPU.
    resp = hs.crm.properties.core_api.get_all(object_type=object_type, _preload_content=False)
    existing = {p["name"] for p in json.loads(resp.data).get("results") or []}
    for spec in specs if specs is not None else property_specs(target):
        if spec["name"] in existing:
            continue
        limited(hs)
        hs.crm.properties.core_api.create(
            object_type=object_type,
            property_create=PropertyCreate(group_name=target.property_group, **spec),
        )
        created.append(spec["name"])
    if created:
        log.info("created in HubSpot %s: %s", object_type, ", ".join(created))
    return created


def in_parallel(fn, chunks: list, workers: int = WORKERS) -> Iterator:
    """fn(chunk) for every chunk, a few at a time, results in chunk order.

    A batch call takes 100-300 ms at HubSpot, so one at a time cannot use a 10-a-second budget;
    the shared budget (limited) still paces every call.
    """
    if len(chunks) <= 1:
        yield from map(fn, chunks)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        yield from pool.map(fn, chunks)


def upsert_contacts(hs: HubSpot, rows: pd.DataFrame) -> Iterator[dict]:
    """Upsert rows (email + properties) in batches of 100; yields one result per record."""
    fields = [c for c in rows.columns if c != "email"]
    # Each batch becomes dicts in its worker: the first call goes out without waiting for all.
    batches = [rows.iloc[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    for results in in_parallel(
        lambda b: list(_upsert_batch(hs, b.to_dict("records"), fields)), batches
    ):
        yield from results


def _upsert_batch(hs: HubSpot, batch: list[dict], fields: list[str]) -> Iterator[dict]:
    inputs = [
        SimplePublicObjectBatchInputUpsert(
            id_property="email", id=r["email"], properties={k: r[k] for k in fields}
        )
        for r in batch
    ]
    try:
        limited(hs)
        # Raw JSON: the SDK's model deserialisation (dateutil on every timestamp) costs more CPU
        # than the whole rest of a large sync.
        resp = hs.crm.contacts.batch_api.upsert(
            batch_input_simple_public_object_batch_input_upsert=(
                BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs)
            ),
            _preload_content=False,
        )
    except Exception as e:  # each hubspot package has its own ApiException class
        status = getattr(e, "status", None)
        if status == 400 and "PROPERTY_DOESNT_EXIST" in str(getattr(e, "body", "")):
            # Not one bad record: every batch would be split to single records and all fail.
            message = _error_message(getattr(e, "body", None)) or str(e)
            raise FieldsMissing(f"HubSpot: {message}") from None
        if status == 400 and len(batch) > 1:
            # A batch with one invalid record is rejected whole: split it to isolate the record.
            mid = len(batch) // 2
            yield from _upsert_batch(hs, batch[:mid], fields)
            yield from _upsert_batch(hs, batch[mid:], fields)
            return
        if status is None:
            raise
        message = _error_message(getattr(e, "body", None)) or str(e)
        for r in batch:
            yield {
                "email": r["email"],
                "status": "failed",
                "http_status": status,
                "message": message,
                "transient": status == 429 or status >= 500,
            }
        return
    daily = resp.headers.get(DAILY_HEADER) if hasattr(resp, "headers") else None
    if daily is not None and hasattr(hs, "daily_remaining"):
        hs.daily_remaining = int(daily)
    try:
        body = json.loads(resp.data)
    except (AttributeError, ValueError):
        raise SyncError("HubSpot answered the batch upsert with no JSON body") from None
    failed: dict[str, str] = {}
    for err in body.get("errors") or []:
        for rid in (err.get("context") or {}).get("ids", []):
            failed[rid.lower()] = err.get("message", "")
    done = {
        ((r.get("properties") or {}).get("email") or "").lower(): (r["id"], r.get("updatedAt"))
        for r in body.get("results") or []
    }
    for r in batch:
        email = r["email"]
        if email in failed or email not in done:
            yield {
                "email": email,
                "status": "failed",
                "http_status": 207,
                "message": failed.get(email, "not in HubSpot's answer"),
                "transient": False,
            }
        else:
            yield {
                "email": email,
                "status": "written",
                "http_status": 200,
                "message": "",
                "transient": False,
                "hubspot_id": done[email][0],
                "modified_at": done[email][1],
            }


def _error_message(body) -> str | None:
    try:
        return json.loads(body).get("message")
    except (TypeError, ValueError):
        return None


def read_contacts(hs: HubSpot, emails: list[str], fields: list[str]) -> dict[str, dict]:
    """Current values of `fields` for contacts by email (batch reads of 100; absent → missing)."""
    from hubspot.crm.contacts import BatchReadInputSimplePublicObjectId, SimplePublicObjectId

    def read(chunk: list[str]) -> list[dict]:
        body = BatchReadInputSimplePublicObjectId(
            id_property="email",
            properties=["email", *fields],
            inputs=[SimplePublicObjectId(id=e) for e in chunk],
        )
        limited(hs)
        resp = hs.crm.contacts.batch_api.read(
            batch_read_input_simple_public_object_id=body, _preload_content=False
        )
        return json.loads(resp.data).get("results") or []

    out: dict[str, dict] = {}
    chunks = [emails[i : i + BATCH] for i in range(0, len(emails), BATCH)]
    for results in in_parallel(read, chunks):
        for r in results:
            props = r.get("properties") or {}
            out[(props.get("email") or "").lower()] = {k: props.get(k) for k in fields}
    return out


def sync(
    hs: HubSpotCrm,
    lake: Lake,
    target: HubSpotTarget,
    scores: pd.DataFrame,
    *,
    dry_run=False,
    min_score_change: float | None = None,
) -> dict:
    """Write changed scores to HubSpot contacts through the sync engine (pql.crm.sync)."""
    return hs.with_target(target).sync(lake, scores, dry_run=dry_run,
                                       min_score_change=min_score_change)  # fmt: skip


def _write(
    hs: HubSpotCrm, todo: pd.DataFrame, located: dict[str, Located]
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Upsert `todo` by email (HubSpot creates whom it does not know), within the day's
    remaining calls; each result with the time HubSpot gives the write (updatedAt)."""
    counts, rows, first = {}, [], todo.head(0)
    if getattr(hs, "daily_remaining", None) is None and len(todo) > BATCH:
        # Every answer says the day's remaining calls: the first batch learns them for the rest.
        first, todo = todo.head(BATCH), todo.iloc[BATCH:]
        rows = list(upsert_contacts(hs, first))
    todo, deferred = _within_daily_limit(hs, hs.target, todo)
    if deferred:
        counts["deferred_daily_limit"] = deferred
    rows += list(upsert_contacts(hs, todo))
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    results["record"] = ("contacts/" + results["hubspot_id"].astype("string")).astype(object)
    results["modified_from"] = results["modified_to"] = results["modified_at"]
    return pd.concat([first, todo]), results, counts


def _within_daily_limit(
    hs: HubSpot, target: HubSpotTarget, todo: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """The records this run can write without taking HubSpot's daily budget below
    `daily_reserve` (the rest stay out of the ledger: the next run sends them)."""
    remaining = getattr(hs, "daily_remaining", None)
    if remaining is None or todo.empty:
        return todo, 0
    reads = 1 + math.ceil(min(len(todo), target.verify_sample) / BATCH)  # read-back and a spare
    fits = max(0, remaining - target.daily_reserve - reads) * BATCH
    if len(todo) <= fits:
        return todo, 0
    log.warning(
        "HubSpot daily limit: %s calls left today (keeping %s in reserve); writing %s of %s "
        "changed records, the rest on the next run",
        remaining, target.daily_reserve, fits, len(todo),
    )  # fmt: skip
    return todo.head(fits), len(todo) - fits


def modified_contacts(
    hs: HubSpot, since: Since, fields: list[str]
) -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """Every contact carrying a PQL value modified in `since`'s gaps: email → its current
    `fields`, email → the record holding it ("contacts/<id>"; for an email a merge made
    secondary, "merged:contacts/<id>" of the record it was merged into), and email → when
    HubSpot last modified it.

    A contact counts when it holds any of the fields (one OR'ed filter group each, up to
    HubSpot's 5, so a search per gap), so a rep clearing the score by hand is found through the
    others; a merge makes a new record carrying the primary's values, so it is found too."""
    any_of = [[Filter(property_name=f, operator="HAS_PROPERTY")] for f in fields[:5]]
    values, holders, modified = {}, {}, {}
    wanted = ["email", "hs_additional_emails", *fields]
    for lo, hi in since.gaps():
        # BETWEEN (bounds included) is one filter: five groups of three stay under HubSpot's 18.
        filters = [
            Filter(property_name="lastmodifieddate", operator="GTE", value=_iso(lo))
            if hi is None
            else Filter(property_name="lastmodifieddate", operator="BETWEEN", value=_iso(lo),
                        high_value=_iso(hi, up=True))
        ]  # fmt: skip
        for r in search_all(hs, "contacts", filters, wanted, any_of=any_of):
            props = r.properties or {}
            for other in (props.get("hs_additional_emails") or "").split(";"):
                if other.strip():
                    holders.setdefault(other.strip().lower(), f"{MERGED}contacts/{r.id}")
            if props.get("email"):
                email = props["email"].lower()
                values[email] = {k: props.get(k) for k in fields}
                holders[email] = f"contacts/{r.id}"
                if r.updated_at:
                    modified[email] = _iso(r.updated_at)
    return values, holders, modified


def _iso(t: datetime, up: bool = False) -> str:
    """HubSpot's form of an instant, to the millisecond (`up`: rounded up, for an upper bound)."""
    t = t.astimezone(UTC)
    if up and t.microsecond % 1000:
        t += timedelta(microseconds=1000 - t.microsecond % 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def search_all(hs: HubSpot, object_type: str, filters: list, properties: list[str], *,
               any_of: list[list] | None = None):  # fmt: skip
    """Every record matching `filters` (and any one of the `any_of` filter lists, OR'ed as
    filter groups), past the 10,000-result cap (sliced by hs_object_id)."""
    last_id = 0
    while True:
        after, seen = None, 0
        above = Filter(property_name="hs_object_id", operator="GT", value=str(last_id))
        groups = [FilterGroup(filters=[*filters, *alt, above]) for alt in any_of or [[]]]
        while True:
            limited(hs, "search")
            try:
                page = hs.crm.objects.search_api.do_search(
                    object_type=object_type,
                    public_object_search_request=PublicObjectSearchRequest(
                        filter_groups=groups,
                        sorts=[{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                        properties=properties,
                        limit=SEARCH_PAGE,
                        after=after,
                    ),
                )
            except Exception as e:  # each hubspot package has its own ApiException class
                body = str(getattr(e, "body", "") or "")
                if getattr(e, "status", None) == 400 and "does not exist" in body:
                    raise FieldsMissing(f"HubSpot: {_error_message(body) or body}") from None
                raise
            for r in page.results or []:
                last_id = max(last_id, int(r.id))
                yield r
            seen += len(page.results or [])
            after = page.paging.next.after if page.paging and page.paging.next else None
            if not after:
                return
            if int(after) >= SEARCH_CAP - SEARCH_PAGE + 1 or seen >= SEARCH_CAP - SEARCH_PAGE:
                break  # start a new slice above the last id seen


def read_companies(hs: HubSpot) -> pd.DataFrame:
    """All companies' firmographics (domain, employees, industry, country), paging through."""
    rows = []
    after = None
    while True:
        limited(hs)
        page = hs.crm.companies.basic_api.get_page(
            limit=100,
            after=after,
            properties=["domain", "numberofemployees", "industry", "country"],
        )
        for c in page.results:
            p = c.properties or {}
            rows.append(
                {
                    "hubspot_id": c.id,
                    "domain": p.get("domain"),
                    "employees": p.get("numberofemployees"),
                    "industry": p.get("industry"),
                    "country": p.get("country"),
                }
            )
        after = page.paging.next.after if page.paging and page.paging.next else None
        if not after:
            cols = ["hubspot_id", "domain", "employees", "industry", "country"]
            return pd.DataFrame(rows, columns=cols)


# --- companies: account qualification (PQA) -------------------------------------------------


def companies_by_domain(hs: HubSpot, domains: list[str]) -> dict[str, str]:
    """domain → company id for the given domains only (searches of 50 domains: a request body
    stays under HubSpot's 3,000 characters), not a listing of every company."""
    out: dict[str, str] = {}
    for i in range(0, len(domains), 50):
        chunk = [d.lower() for d in domains[i : i + 50]]  # IN wants lower-case strings
        flt = Filter(property_name="domain", operator="IN", values=chunk)
        for r in search_all(hs, "companies", [flt], ["domain"]):
            domain = ((r.properties or {}).get("domain") or "").lower()
            if domain:
                out.setdefault(domain, str(r.id))
    return out


def company_property_specs(target: HubSpotTarget) -> list[dict]:
    """The custom company properties the account sync writes."""
    f = target.fields
    return [
        {"name": f.account_qualified, "label": "PQA", "type": "bool",
         "field_type": "booleancheckbox",
         "options": [{"label": "Yes", "value": "true", "displayOrder": 0},
                     {"label": "No", "value": "false", "displayOrder": 1}]},
        {"name": f.account_score, "label": "PQA best user score", "type": "number",
         "field_type": "number"},
        {"name": f.account_reasons, "label": "PQA reasons", "type": "string",
         "field_type": "textarea"},
    ]  # fmt: skip


def sync_accounts(hs: HubSpot, lake: Lake, target: HubSpotTarget, accounts: pd.DataFrame) -> dict:
    """Write changed account qualification to the companies with that domain (never creates).

    Companies are found by domain and updated by record id in batches of 100; accounts without
    a company in HubSpot are counted, not created (company records belong to their owners).
    """
    from hubspot.crm.companies import BatchInputSimplePublicObjectBatchInput
    from hubspot.crm.companies import SimplePublicObjectBatchInput as CompanyInput

    started = datetime.now(UTC)
    desired = desired_accounts(accounts, target)
    ledger = load_ledger(lake, "companies_ledger")
    todo = changed(desired, ledger, key="domain")
    counts = {"accounts": len(desired), "unchanged": len(desired) - len(todo)}
    # A company whose domain changed (or that was merged: a new record) since the last run
    # may now hold a domain: those domains are written whole to the company holding them now.
    since = edits_since(lake, "companies_ledger")
    suspects: set[str] = set()
    if ledger is not None and since:
        flt = Filter(property_name="hs_lastmodifieddate", operator="GTE", value=_iso(since))
        changed_ids = {str(r.id): ((r.properties or {}).get("domain") or "").lower()
                       for r in search_all(hs, "companies", [flt], ["domain"])}  # fmt: skip
        suspects = {d for d in changed_ids.values() if d} & set(ledger["domain"])
        suspects |= {d for d, r in records(ledger, "domain").items()
                     if r.split("/", 1)[-1] in changed_ids}  # fmt: skip
        suspects &= set(desired["domain"])
    if todo.empty and not suspects:
        if ledger is not None:  # the next run looks for changes from this run on
            save_ledger(lake, ledger, name="companies_ledger", run_started=started)
        return {**counts, "written": 0, "failed": 0, "not_in_crm": 0}
    ensure_properties(hs, target, "companies", company_property_specs(target))
    by_domain = companies_by_domain(hs, sorted(set(todo["domain"]) | suspects))
    todo, moved = relocated(todo, desired, ledger,
                            {d: f"companies/{by_domain[d]}" for d in suspects if d in by_domain},
                            key="domain")  # fmt: skip
    if moved:
        counts["moved"] = len(moved)
    todo = todo.assign(hubspot_id=todo["domain"].map(by_domain))
    missing = todo[todo["hubspot_id"].isna()]
    todo = todo[todo["hubspot_id"].notna()]
    fields = [c for c in desired.columns if c != "domain"]
    written, failed = [], []
    rows = todo.to_dict("records")
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        body = BatchInputSimplePublicObjectBatchInput(
            inputs=[CompanyInput(id=r["hubspot_id"], properties={k: r[k] for k in fields})
                    for r in batch]
        )  # fmt: skip
        try:
            limited(hs)
            resp = hs.crm.companies.batch_api.update(
                batch_input_simple_public_object_batch_input=body
            )
        except Exception as e:  # each hubspot package has its own ApiException class
            if getattr(e, "status", None) is None:
                raise
            failed += [(r["domain"], str(getattr(e, "body", e))[:200]) for r in batch]
            continue
        bad = {i for err in getattr(resp, "errors", None) or []
               for i in (err.context or {}).get("ids", [])}  # fmt: skip
        for r in batch:
            (failed.append((r["domain"], "rejected")) if r["hubspot_id"] in bad
             else written.append(r["domain"]))  # fmt: skip
    done = todo[among(todo["domain"], written)].drop(columns=["hubspot_id"])
    update_ledger(lake, ledger, done, key="domain", name="companies_ledger", run_started=started,
                  where={d: f"companies/{by_domain[d]}" for d in written})  # fmt: skip
    counts.update(written=len(written), failed=len(failed), not_in_crm=len(missing))
    if failed:
        log.warning("HubSpot companies: %s failed, e.g. %s", len(failed), failed[:3])
    log.info("HubSpot companies: %(written)s written, %(unchanged)s unchanged, "
             "%(not_in_crm)s without a company record", counts)  # fmt: skip
    return counts
