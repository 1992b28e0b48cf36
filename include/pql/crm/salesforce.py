"""Salesforce through simple-salesforce: field check, diff-based Lead/Contact writes.

Same shape as the HubSpot sync (pql.crm.hubspot): desired values per email, diffed against a
ledger in the lake, only changed records written, per-record results kept under the run folder,
only successes recorded in the ledger. Records are found by email: a Contact wins, a converted
Lead writes to its Contact, else the Lead; unknown emails become Leads (create_missing). Once
found, a person's record is the ledger's: written by Id, looked up again only when a change
check sees it move (converted, a Contact created for the email) or a write finds it gone.

Long because it is the whole Salesforce adapter: login, field check, lookups, Collections and
Bulk API 2.0 writes with lock retries, conversions, Accounts.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import pandas as pd
from simple_salesforce import Salesforce
from simple_salesforce.api import DEFAULT_API_VERSION
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceOperationError,
)

from pql import http
from pql.crm import Retargetable, SyncError
from pql.crm import sync as engine
from pql.crm.ledger import (
    MODIFIED,
    Since,
    changed,
    desired_accounts,
    desired_values,
    differing,
    edits_since,
    load_ledger,
    normal_emails,
    records,
    relocated,
    save_ledger,
    update_ledger,
)
from pql.crm.sync import FieldsMissing, Located, Recent
from pql.crm.targets import SalesforceTarget
from pql.frames import among
from pql.lake import Lake

log = logging.getLogger(__name__)

CRM = "salesforce"  # the lake's sync folder
COLLECTION = 200  # sObject Collections' maximum records per call
LOOKUP = 300  # emails per SOQL IN (...) (well under the 100,000-character statement limit)
LOCK_RETRIES = 3  # extra attempts for records failing with UNABLE_TO_LOCK_ROW
LOCK_BACKOFF_S = 0.25  # doubled after each attempt
BULK_WAIT_S = 1  # first poll of a Bulk API 2.0 job
OBJECTS = ("Lead", "Contact")
FIELD_TYPES = {  # what check_fields asks an admin to create
    "score": "Number(18, 0)",
    "flag": "Checkbox",
    "qualified_at": "Date/Time",
    "reasons": "Long Text Area(32768)",
    "model_version": "Text(80)",
    "account_qualified": "Checkbox",
    "account_score": "Number(18, 0)",
    "account_reasons": "Long Text Area(32768)",
}
# Which mapped fields live on which object.
LEVELS = {
    "Lead": ("score", "flag", "qualified_at", "reasons", "model_version"),
    "Contact": ("score", "flag", "qualified_at", "reasons", "model_version"),
    "Account": ("account_qualified", "account_score", "account_reasons"),
}
RESULT_COLUMNS = ["email", "status", "object", "record_id", "status_code", "message", "transient"]
# A write refused for these: the record was converted or deleted (merged) since it was found.
GONE = ("CANNOT_UPDATE_CONVERTED_LEAD", "ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY")


class SalesforceCrm(Retargetable):
    """The Salesforce adapter (pql.crm.Crm): the login that makes a simple-salesforce client,
    the client, and one re-login per operation. Calls go through it, `crm(lambda sf: ...)`: an
    expired session is refreshed once, then the operation fails clearly."""

    kind = "salesforce"
    label = "Salesforce"
    writes_by_record = True  # every write needs its record found first

    def __init__(
        self,
        login: Callable[[], Salesforce] | None,
        target: SalesforceTarget | None = None,
        *,
        sf: Salesforce | None = None,
        outcome_field: str | None = None,
    ):
        self.login, self.sf, self.refreshed = login, sf, False
        self.target = target or SalesforceTarget(kind="salesforce")
        self.outcome_field = outcome_field  # a custom Event field holding a meeting's outcome

    def __call__(self, fn: Callable[[Salesforce], object]):
        if self.sf is None:
            self.sf = self.login()
        try:
            return fn(self.sf)
        except SalesforceExpiredSession as e:
            if self.refreshed or self.login is None:
                raise SyncError(
                    "Salesforce session expired (401 INVALID_SESSION_ID)"
                    + (" again after logging in again" if self.refreshed else "")
                    + ": check the connection's credentials and the org's session timeout"
                ) from e
            log.info("Salesforce session expired: logging in again")
            self.refreshed = True
            self.sf = self.login()
            return self(fn)

    def keys(self, scores: pd.DataFrame) -> dict[str, str]:
        """email → match key for a scores frame (kept for the frame a run works on: a run asks
        several times and 100,000 rows take a tenth of a second)."""
        cached = getattr(self, "_keys", None)
        if cached is None or cached[0] is not scores or cached[1] is not self.target:
            self._keys = (scores, self.target, match_keys(scores, self.target))
        return self._keys[2]

    def operation(self) -> SalesforceCrm:
        """The adapter at the start of an operation: it may log in again once."""
        self.refreshed = False
        return self

    # --- the sync engine's operations (pql.crm.sync.People) ---

    def provision(self) -> None:
        self(lambda s: check_fields(s, self.target))

    def recent(self, since: Since | None, scores: pd.DataFrame, ledger: pd.DataFrame) -> Recent:
        return _recent(self, since, scores, ledger)

    def locate(self, emails: list[str], scores: pd.DataFrame) -> dict[str, Found]:
        key_of = self.keys(scores)
        email_of = {k: e for e, k in key_of.items()}
        keys = sorted({key_of[e] for e in emails if key_of.get(e)})
        found = find_records(self, keys, self.target)
        return {email_of[k]: f for k, f in found.items() if k in email_of}

    def write(self, todo: pd.DataFrame, located: dict, scores: pd.DataFrame):
        return _write(self, todo, located, scores)

    def read(self, where: dict[str, str]) -> dict[str, dict]:
        return read_back(self, {e: tuple(r.split("/", 1)) for e, r in where.items()}, self.target)

    # --- the pipeline's operations (pql.crm.Crm) ---

    def sync(
        self,
        lake: Lake,
        scores: pd.DataFrame,
        *,
        dry_run: bool = False,
        min_score_change: float | None = None,
    ) -> dict:
        return engine.run(self.operation(), lake, scores, dry_run=dry_run,
                          min_score_change=min_score_change)  # fmt: skip

    def sync_accounts(self, lake: Lake, accounts: pd.DataFrame) -> dict:
        return sync_accounts(self, lake, self.target, accounts)

    def read_accounts(self) -> pd.DataFrame:
        return read_accounts(self)

    def pull_outcomes(self, since: datetime | None) -> dict:
        from pql.crm import salesforce_outcomes

        return salesforce_outcomes.pull(self, since, outcome_field=self.outcome_field)

    def create_tasks(self, leads: pd.DataFrame, rule, now: datetime, made: list) -> list:
        from pql.crm.salesforce_tasks import create_tasks

        return create_tasks(self, leads, rule, now, made=made)


def adapter(sf, login: Callable[[], Salesforce] | None = None, target=None) -> SalesforceCrm:
    """`sf` as an adapter at the start of an operation: itself (with `target`'s settings when
    given), or a client (and its login)."""
    if isinstance(sf, SalesforceCrm):
        return sf.operation().with_target(target) if target is not None else sf.operation()
    return SalesforceCrm(login, target, sf=sf)


def _extra(x: dict, key: str):
    # The Salesforce provider's form once stored its fields prefixed; both are read.
    return x.get(key) or x.get(f"extra__salesforce__{key}") or None


def login(conn) -> Callable[[], Salesforce]:
    """A function logging in to Salesforce afresh from a connection (pql.connections.Conn of
    conn_type salesforce, the fields the Salesforce provider's hook reads): login/password (+
    extra security_token), or consumer_key/consumer_secret (client credentials, with login/
    password: the username-password flow), or a private_key_file_path (JWT); domain
    (login/test or a My Domain), instance_url, version; `ca_bundle` for TLS verification."""
    x = conn.extra

    def login() -> Salesforce:
        return Salesforce(
            username=conn.login,
            password=conn.password,
            security_token=_extra(x, "security_token"),
            domain=_extra(x, "domain"),
            instance_url=_extra(x, "instance_url"),
            version=_extra(x, "version") or DEFAULT_API_VERSION,
            consumer_key=_extra(x, "consumer_key"),
            consumer_secret=_extra(x, "consumer_secret"),
            privatekey_file=_extra(x, "private_key_file_path"),
            session=http.session(conn),
        )

    return login


def connect(target: SalesforceTarget, conn, *, outcomes=None) -> SalesforceCrm:
    """The adapter for a connection; `outcomes` (config outcomes) may name the Event field
    holding a meeting's outcome (salesforce_meeting_outcome_field)."""
    field = getattr(outcomes, "salesforce_meeting_outcome_field", None)
    return SalesforceCrm(login(conn), target, outcome_field=field)


def check_fields(sf: Salesforce, target: SalesforceTarget, objects=OBJECTS) -> None:
    """Raise SyncError naming every mapped field missing on `objects` (with its type)."""
    wanted = target.fields.model_dump()
    missing = []
    for obj in objects:
        have = {f["name"].lower() for f in getattr(sf, obj).describe()["fields"]}
        missing += [
            f"{obj}.{wanted[key]} ({FIELD_TYPES[key]})"
            for key in LEVELS[obj]
            if wanted[key].lower() not in have
        ]
    if missing:
        raise SyncError(
            "Salesforce is missing fields the PQL sync writes; create them (Setup → Object "
            "Manager → Fields & Relationships) or map others in config crm.fields: "
            + ", ".join(missing)
        )


_SOQL_ESCAPES = str.maketrans(
    {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
     "\f": "\\f"}
)  # fmt: skip


def soql_quote(value: str) -> str:
    """A SOQL string literal with every escape SOQL defines (as simple-salesforce's
    format_soql): quotes, backslash, line breaks, tab, backspace and form feed."""
    return "'" + value.translate(_SOQL_ESCAPES) + "'"


class Found(NamedTuple):
    """The record a user's values are written to, and what it holds now."""

    object: str
    id: str
    account: str | None
    owner: str | None
    values: dict  # the mapped fields' current values, by configured field name

    @property
    def record(self) -> str:
        return f"{self.object}/{self.id}"

    @property
    def parent(self) -> str | None:
        return self.account


def _mapped(target: SalesforceTarget) -> list[str]:
    f = target.fields.model_dump()
    return [f[k] for k in LEVELS["Contact"]]


def _values(record: dict, fields: list[str]) -> dict:
    """The mapped fields of a SOQL record, by configured name (SOQL answers in describe case)."""
    lower = {k.lower(): v for k, v in record.items()}
    return {f: lower.get(f.lower()) for f in fields}


def in_chunks(call: SalesforceCrm, soql: str, values: list[str]) -> list[dict]:
    """Records of `soql` (with `{in}` for a quoted IN list), LOOKUP values per statement."""
    out = []
    for i in range(0, len(values), LOOKUP):
        quoted = ", ".join(soql_quote(v) for v in values[i : i + LOOKUP])
        out += query(call, soql.replace("{in}", quoted))
    return out


def query(call: SalesforceCrm, soql: str) -> list[dict]:
    """Every record of `soql`; FieldsMissing when the org has no field it names."""
    try:
        return call(lambda sf: sf.query_all(soql))["records"]
    except SalesforceMalformedRequest as e:
        if "No such column" in str(e):
            raise FieldsMissing(f"Salesforce: {e}") from e
        raise


def find_records(
    call: SalesforceCrm, keys: list[str], target: SalesforceTarget
) -> dict[str, Found]:
    """match key (lower-cased) → the record to write, for users that exist: a Contact wins,
    a converted Lead gives its Contact, else the open Lead."""
    key, fields = target.match_on, _mapped(target)
    cols = ", ".join(fields)
    contacts: dict[str, Found] = {}
    for r in in_chunks(call, f"SELECT Id, {key}, AccountId, OwnerId, {cols} FROM Contact "
                        f"WHERE {key} IN ({{in}}) ORDER BY Id", keys):  # fmt: skip
        k = str(_values(r, [key])[key]).lower()
        contacts.setdefault(
            k, Found("Contact", r["Id"], r.get("AccountId"), r.get("OwnerId"), _values(r, fields))
        )
    leads: dict[str, Found] = {}
    converted: dict[str, str] = {}  # key → converted Contact id
    rest = [k for k in keys if k.lower() not in contacts]
    for r in in_chunks(call, f"SELECT Id, {key}, OwnerId, IsConverted, ConvertedContactId, "
                        f"{cols} FROM Lead WHERE {key} IN ({{in}}) ORDER BY Id", rest):  # fmt: skip
        k = str(_values(r, [key])[key]).lower()
        if r.get("IsConverted") and r.get("ConvertedContactId"):
            converted.setdefault(k, r["ConvertedContactId"])
        elif not r.get("IsConverted"):
            leads.setdefault(k, Found("Lead", r["Id"], None, r.get("OwnerId"), _values(r, fields)))
    by_id = {
        r["Id"]: Found("Contact", r["Id"], r.get("AccountId"), r.get("OwnerId"),
                       _values(r, fields))
        for r in in_chunks(call, f"SELECT Id, AccountId, OwnerId, {cols} FROM Contact "
                            "WHERE Id IN ({in})", sorted(set(converted.values())))
    }  # fmt: skip
    return {**leads, **{k: by_id[i] for k, i in converted.items() if i in by_id}, **contacts}


def changes(
    call: SalesforceCrm, since: Since, target: SalesforceTarget, edits: bool
) -> tuple[list[dict], list[dict]]:
    """The Leads and the Contacts a run must know of, one query each: Leads converted since
    `since.start` and Contacts created since (where a person's values may have moved), and with
    `edits` the open Leads and Contacts holding a PQL value that Salesforce changed in `since`'s
    gaps (around our own last writes). A record holding any of score, qualification time or
    model version counts, so one whose score a rep cleared by hand is found too (long text
    areas cannot be filtered in SOQL)."""
    key, fields = target.match_on, _mapped(target)
    f = target.fields
    ours = " OR ".join(f"{n} != null" for n in (f.score, f.qualified_at, f.model_version))
    gaps = " OR ".join(
        f"(SystemModstamp >= {_soql_time(lo)}"
        + (f" AND SystemModstamp <= {_soql_time(hi, up=True)})" if hi else ")")
        for lo, hi in since.gaps()
    )
    start, cols = _soql_time(since.start), f"Id, {key}, SystemModstamp, {', '.join(fields)}"
    leads = f"(IsConverted = true AND SystemModstamp >= {start})"
    contacts = f"CreatedDate >= {start}"
    if edits:
        leads += f" OR (IsConverted = false AND ({gaps}) AND ({ours}))"
        contacts += f" OR (({gaps}) AND ({ours}))"
    return (
        query(call, f"SELECT {cols}, IsConverted, ConvertedContactId FROM Lead WHERE {leads} "
                    "ORDER BY Id"),
        query(call, f"SELECT {cols}, CreatedDate FROM Contact WHERE {contacts} ORDER BY Id"),
    )  # fmt: skip


def _soql_time(t: datetime, up: bool = False) -> str:
    """A SOQL datetime literal (whole seconds; `up`: rounded up, for an upper bound)."""
    t = t.astimezone(UTC)
    if up and t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_back(call: SalesforceCrm, written: dict[str, tuple[str, str]], target: SalesforceTarget):
    """email → mapped values held now (and the record's SystemModstamp under MODIFIED), for
    records given as email → (object, id)."""
    fields = _mapped(target)
    email_of = {rid[:15]: email for email, (_, rid) in written.items()}  # 15 or 18 chars
    out = {}
    for obj in sorted({o for o, _ in written.values()}):
        ids = sorted(rid for o, rid in written.values() if o == obj)
        for r in in_chunks(call, f"SELECT Id, SystemModstamp, {', '.join(fields)} FROM {obj} "
                            "WHERE Id IN ({in})", ids):  # fmt: skip
            out[email_of[r["Id"][:15]]] = {**_values(r, fields), MODIFIED: r.get("SystemModstamp")}
    return out


def wire(row: dict, target: SalesforceTarget) -> dict:
    """Ledger strings → Salesforce JSON values (number, boolean, datetime or null)."""
    f = target.fields
    return {
        f.score: float(row[f.score]),
        f.flag: row[f.flag] == "true",
        f.qualified_at: row[f.qualified_at] or None,
        f.reasons: row[f.reasons] or None,
        f.model_version: row[f.model_version] or None,
    }


def _new_lead(email: str, key: str | None, target: SalesforceTarget) -> dict:
    local, _, domain = email.partition("@")
    lead = {
        "LastName": local or email,
        "Company": domain or "[not provided]",
        "Email": email,
        "LeadSource": target.lead_source,
    }
    if target.match_on.lower() != "email":
        lead[target.match_on] = key
    return lead


def _result(email, status, obj, rid, code="", message="", transient=False) -> dict:
    return dict(
        zip(RESULT_COLUMNS, [email, status, obj, rid, code, message, transient], strict=True)
    )


def write_collections(call: SalesforceCrm, writes: list[dict]) -> list[dict]:
    """Write via sObject Collections (200 a call, allOrNone false); lock failures retried."""
    results: dict[int, dict] = {}
    pending = list(range(len(writes)))
    for attempt in range(LOCK_RETRIES + 1):
        if attempt:
            time.sleep(http.doubling(attempt, LOCK_BACKOFF_S))
            log.info("retrying %s records locked by Salesforce (attempt %s)", len(pending), attempt)
        locked = []
        for method in ("PATCH", "POST"):  # updates (with id), then creates
            todo = [i for i in pending if (writes[i]["id"] is not None) == (method == "PATCH")]
            for start in range(0, len(todo), COLLECTION):
                chunk = todo[start : start + COLLECTION]
                records = [writes[i]["record"] for i in chunk]
                answer = call(
                    lambda sf, rs=records, m=method: sf.restful(
                        "composite/sobjects", method=m, json={"allOrNone": False, "records": rs}
                    )
                )
                for i, r in zip(chunk, answer, strict=True):
                    w = writes[i]
                    if r.get("success"):
                        results[i] = _result(w["email"], "written", w["object"], r.get("id"))
                        continue
                    errors = r.get("errors") or [{}]
                    code = errors[0].get("statusCode", "")
                    message = "; ".join(e.get("message", "") for e in errors)
                    results[i] = _result(
                        w["email"], "failed", w["object"], w["id"], code, message,
                        code == "UNABLE_TO_LOCK_ROW",
                    )  # fmt: skip
                    if code == "UNABLE_TO_LOCK_ROW":
                        locked.append(i)
        pending = locked
        if not pending:
            break
    return [results[i] for i in range(len(writes))]


def _bulk(call: SalesforceCrm, writes: list[dict]) -> list[dict]:
    """Write via Bulk API 2.0 (one job per object and operation); lock failures go again
    through Collections (with its retries)."""
    results: dict[int, dict] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, w in enumerate(writes):
        groups.setdefault((w["object"], "update" if w["id"] else "insert"), []).append(i)
    for (obj, op), idx in groups.items():
        rows = []
        for i in idx:
            r = {k: v for k, v in writes[i]["record"].items() if k not in ("attributes", "id")}
            if op == "update":
                r = {"Id": writes[i]["id"], **r}
            rows.append({k: _csv(v) for k, v in r.items()})
        key = (lambda i: writes[i]["id"]) if op == "update" else (lambda i: writes[i]["email"])
        by_key = {key(i).lower(): i for i in idx}

        def run(sf, obj=obj, op=op, rows=rows):
            handler = getattr(sf.bulk2, obj)
            jobs = getattr(handler, op)(records=rows, wait=BULK_WAIT_S)
            clean = all(
                not j["numberRecordsFailed"]
                and j["numberRecordsProcessed"] == j["numberRecordsTotal"]
                for j in jobs
            )
            if op == "update" and clean:
                return None  # every row updated: the ids are ours, no results to download
            return [
                (
                    handler.get_successful_records(j["job_id"]),
                    handler.get_failed_records(j["job_id"]) if j["numberRecordsFailed"] else "",
                )
                for j in jobs
            ]

        answers = call(run)
        if answers is None:
            for i in idx:
                w = writes[i]
                results[i] = _result(w["email"], "written", obj, w["id"])
            continue
        for ok_text, failed_text in answers:
            for r in csv.DictReader(io.StringIO(ok_text)):
                k = (r.get("Id") if op == "update" else r.get("Email")) or ""
                if k.lower() in by_key:
                    i = by_key[k.lower()]
                    w = writes[i]
                    results[i] = _result(w["email"], "written", obj, r.get("sf__Id") or w["id"])
            for r in csv.DictReader(io.StringIO(failed_text)):
                k = (r.get("Id") or r.get("sf__Id") if op == "update" else r.get("Email")) or ""
                if k.lower() in by_key:
                    i = by_key[k.lower()]
                    code, _, message = (r.get("sf__Error") or "").partition(":")
                    message = message.rsplit(":", 1)[0] if ":" in message else message
                    w = writes[i]
                    results[i] = _result(
                        w["email"], "failed", obj, w["id"], code, message,
                        code == "UNABLE_TO_LOCK_ROW",
                    )  # fmt: skip
    locked = [i for i, r in results.items() if r["status_code"] == "UNABLE_TO_LOCK_ROW"]
    if locked:
        for i, r in zip(locked, write_collections(call, [writes[i] for i in locked]), strict=True):
            results[i] = r
    return [
        results.get(i)
        or _result(w["email"], "failed", w["object"], w["id"], "", "not in the job's results")
        for i, w in enumerate(writes)
    ]


def _csv(value) -> str:
    """A Bulk API 2.0 CSV cell: empty means 'leave unchanged', so null is #N/A."""
    if value is None or value == "":
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sync(
    sf,
    lake: Lake,
    target: SalesforceTarget,
    scores: pd.DataFrame,
    *,
    dry_run: bool = False,
    login: Callable[[], Salesforce] | None = None,
    min_score_change: float | None = None,
) -> dict:
    """Write changed scores to Salesforce Leads/Contacts through the sync engine
    (pql.crm.sync). `sf`: the adapter, or a client (and `login`, making a fresh one once
    when the session expires)."""
    return engine.run(adapter(sf, login, target), lake, scores, dry_run=dry_run,
                      min_score_change=min_score_change)  # fmt: skip


def _recent(
    call: SalesforceCrm, since: Since | None, scores: pd.DataFrame, ledger: pd.DataFrame
) -> Recent:
    """Edits since the last run (overwrite rule) and the people whose record may have changed
    since (Leads converted, Contacts created): found where they live now. A ledger from before
    records were kept has everyone found once: those whose record does not hold what was
    written are written again, the others' records only noted."""
    target = call.target
    key, fields = target.match_on, _mapped(target)
    key_of = call.keys(scores)
    email_of = {k: e for e, k in key_of.items()}
    held = records(ledger)
    values, modified, candidates = {}, {}, {}
    if since is not None:
        edits = target.on_manual_edit == "overwrite"
        leads, contacts = changes(call, since, target, edits)
        start = pd.Timestamp(since.start).floor("s")
        for obj, rows in (("Lead", leads), ("Contact", contacts)):  # a Contact wins
            for r in rows:
                k = _values(r, [key])[key]
                email = email_of.get(str(k).lower()) if k else None
                if email is None:
                    continue
                if r.get("IsConverted"):
                    if r.get("ConvertedContactId"):
                        candidates[email] = f"Contact/{r['ConvertedContactId']}"
                    continue
                record = f"{obj}/{r['Id']}"
                if obj == "Contact" and pd.Timestamp(r["CreatedDate"]) >= start:
                    candidates[email] = record
                current = _values(r, fields)
                # The values of the record the person's values live on, not of a duplicate.
                if edits and held.get(email, record) == record and any(current.values()):
                    values[email], modified[email] = current, r.get("SystemModstamp")
    legacy = "record" not in ledger.columns
    if legacy:
        suspects = set(key_of) & set(ledger["email"])
    else:
        suspects = {e for e, r in candidates.items() if held.get(e) != r}
    found = call.locate(sorted(suspects), scores) if suspects else {}
    where = {e: f.record for e, f in found.items()}
    if not legacy:
        return Recent(values=values, holders=where, modified=modified, located=found)
    want = desired_values(scores, target).set_index("email")
    differ = differing({e: found[e].values for e in where},
                       {e: want.loc[e].to_dict() for e in where if e in want.index})  # fmt: skip
    return Recent(values=values, holders={e: r for e, r in where.items() if e in differ},
                  noted=where, modified=modified, located=found)  # fmt: skip


def _write(
    call: SalesforceCrm,
    todo: pd.DataFrame,
    located: dict[str, Located | Found],
    scores: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Update each located record by Id; create a Lead for whom Salesforce does not have (when
    the match key is known); Bulk API 2.0 at bulk_threshold records, else Collections. A record
    found converted or deleted is looked up again and written where the person lives now."""
    counts: dict = {}
    with clock(call) as spans:
        writes, not_in_crm = _writes(call, todo, located, scores)
        results = _send(call, writes)
        gone = sorted({r["email"] for r in results
                       if r["status"] == "failed" and r["status_code"] in GONE})  # fmt: skip
        if gone:
            log.info("%s of %s records written were converted or deleted since: written where "
                     "the person lives now", len(gone), len(writes))  # fmt: skip
            found = call.locate(gone, scores)
            again, _ = _writes(call, todo[among(todo["email"], gone)], found, scores)
            redone = dict(zip([w["email"] for w in again], _send(call, again), strict=True))
            results = [redone.get(r["email"], r) for r in results]
            writes = [w for w in writes if w["email"] not in redone] + again
            counts["relocated"] = sum(r["status"] == "written" for r in redone.values())
    frame = pd.DataFrame(results, columns=RESULT_COLUMNS)
    bad = frame[frame["status_code"].eq("INVALID_FIELD") & frame["message"].str.contains(
        "No such column", na=False)]  # fmt: skip
    if len(bad):
        raise FieldsMissing(f"Salesforce: {bad['message'].iloc[0]}")
    frame["record"] = (frame["object"] + "/" + frame["record_id"].astype(str)).where(
        frame["record_id"].notna()
    )
    frame["parent"] = frame["email"].map({w["email"]: w["account"] for w in writes})
    if spans:  # every write of the run lies between these, on Salesforce's clock
        frame["modified_from"] = min(lo for lo, _ in spans).isoformat()
        frame["modified_to"] = max(hi for _, hi in spans).isoformat()
    ok = frame[frame["status"] == "written"]
    created = {w["email"] for w in writes if w["id"] is None}
    counts |= {
        "created": int(among(ok["email"], created).sum()),
        "not_in_crm": not_in_crm,
        "api": "bulk" if len(writes) >= call.target.bulk_threshold else "collections",
    }
    return todo, frame, counts


def _writes(
    call: SalesforceCrm, todo: pd.DataFrame, located: dict, scores: pd.DataFrame
) -> tuple[list[dict], int]:
    """The writes for `todo` (an update per located record, a new Lead for the others when
    create_missing and the match key is known), records of one account together; and how
    many people could not be written."""
    target = call.target
    key_of = call.keys(scores)
    writes, not_in_crm = [], 0
    for row in todo.to_dict("records"):
        email, values = row["email"], wire(row, target)
        if email in located:
            f = located[email]
            obj, rid = f.record.split("/", 1)
            account = f.parent
            record = {"attributes": {"type": obj}, "id": rid, **values}
        elif target.create_missing and key_of.get(email):
            obj, rid, account = "Lead", None, None
            record = {"attributes": {"type": "Lead"},
                      **_new_lead(email, key_of[email], target), **values}  # fmt: skip
        else:
            not_in_crm += 1
            continue
        writes.append({"email": email, "object": obj, "id": rid, "account": account,
                       "record": record})  # fmt: skip
    # Records of one account together: fewer parent locks contended across calls.
    writes.sort(key=lambda w: (w["account"] or "", w["object"], w["id"] or ""))
    return writes, not_in_crm


def _send(call: SalesforceCrm, writes: list[dict]) -> list[dict]:
    """One result per write, in order: Bulk API 2.0 at bulk_threshold writes, else Collections.
    FieldsMissing when Salesforce refuses the request for a field it does not have."""
    if not writes:
        return []
    bulk = len(writes) >= call.target.bulk_threshold
    try:
        return (_bulk if bulk else write_collections)(call, writes)
    except (SalesforceMalformedRequest, SalesforceOperationError) as e:
        if "No such column" in str(e) or "Field name not found" in str(e):
            raise FieldsMissing(f"Salesforce: {e}") from e
        raise


@contextmanager
def clock(call: SalesforceCrm) -> Iterator[list[tuple[datetime, datetime]]]:
    """Spans of Salesforce's clock holding the handling of each call made inside: its answer's
    Date (whole seconds) less the round trip, to that Date. Salesforce does not say when it
    saved a record; these bound it without a query. The second of the Date itself stays
    searched (a search bound is a whole second), so an edit made right after our write, in
    that second, is found: records we wrote in it are read again, and hold our values."""
    spans: list[tuple[datetime, datetime]] = []

    def hook(response, *args, **kwargs) -> None:
        try:
            at = parsedate_to_datetime(response.headers["Date"])
        except (KeyError, TypeError, ValueError):
            return
        spans.append((at - response.elapsed, at))

    session = call(lambda sf: sf.session)
    session.hooks["response"].append(hook)
    try:
        yield spans
    finally:
        session.hooks["response"].remove(hook)


def match_keys(scores: pd.DataFrame, target: SalesforceTarget) -> dict[str, str]:
    """email → the lower-cased value users are matched on (the email, or the user id)."""
    emails = normal_emails(scores["email"])
    s, emails = scores[emails.notna()], emails[emails.notna()]
    if target.match_on.lower() == "email":
        return dict(zip(emails, emails, strict=True))
    ids = s["user_key"].astype("string").str.lower()
    return {e: k for e, k in zip(emails, ids, strict=True) if not pd.isna(k)}


# --- accounts: qualification (PQA) -------------------------------------------------------------


def sync_accounts(
    sf: Salesforce,
    lake: Lake,
    target: SalesforceTarget,
    accounts: pd.DataFrame,
    *,
    login: Callable[[], Salesforce] | None = None,
) -> dict:
    """Write changed account qualification to the Accounts whose Website has that domain.

    Accounts are never created (they belong to their owners); a domain without one is counted.
    Writes go through Collections (lock errors retried alone), successes into their own ledger.
    """
    f = target.fields
    started = datetime.now(UTC)
    desired = desired_accounts(accounts, target)  # the same wire strings as HubSpot's
    ledger = load_ledger(lake, "accounts_ledger", crm=CRM)
    todo = changed(desired, ledger, key="domain")
    counts = {"accounts": len(desired), "unchanged": len(desired) - len(todo)}
    call = adapter(sf, login, target)
    # An Account whose Website changed since the last run may now hold a domain (or no
    # longer hold one): those domains are written whole to the Account that holds them now.
    since = edits_since(lake, "accounts_ledger", crm=CRM)
    suspects: set[str] = set()
    if ledger is not None and since:
        stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        changed_ids = {
            r["Id"]: domain_of(r.get("Website"))
            for r in call(lambda s: s.query_all(
                f"SELECT Id, Website FROM Account WHERE SystemModstamp >= {stamp}"))["records"]
        }  # fmt: skip
        held = records(ledger, "domain")
        suspects = {d for d in changed_ids.values() if d} & set(ledger["domain"])
        suspects |= {d for d, r in held.items() if r.split("/", 1)[-1] in changed_ids}
        suspects &= set(desired["domain"])
    if todo.empty and not suspects:
        if ledger is not None:  # the next run looks for changes from this run on
            save_ledger(lake, ledger, name="accounts_ledger", crm=CRM, run_started=started)
        return {**counts, "written": 0, "failed": 0, "not_in_crm": 0}
    call(lambda s: check_fields(s, target, ("Account",)))
    rows = call(lambda s: s.query_all("SELECT Id, Website FROM Account WHERE Website != null"))
    ids: dict[str, str] = {}
    for r in rows["records"]:
        ids.setdefault(domain_of(r.get("Website")) or "", r["Id"])
    todo, moved = relocated(todo, desired, ledger,
                            {d: f"Account/{ids[d]}" for d in suspects if d in ids},
                            key="domain")  # fmt: skip
    if moved:
        counts["moved"] = len(moved)
    writes, missing = [], 0
    for row in todo.to_dict("records"):
        rid = ids.get(row["domain"])
        if rid is None:
            missing += 1
            continue
        values = {
            f.account_qualified: row[f.account_qualified] == "true",
            f.account_score: float(row[f.account_score]),
            f.account_reasons: row[f.account_reasons] or None,
        }
        record = {"attributes": {"type": "Account"}, "id": rid, **values}
        # `email` is the results' key column: here it holds the domain.
        writes.append({"email": row["domain"], "object": "Account", "id": rid, "account": rid,
                       "record": record})  # fmt: skip
    results = pd.DataFrame(
        write_collections(call, writes) if writes else [], columns=RESULT_COLUMNS
    )
    written = results.loc[results["status"] == "written", "email"]
    update_ledger(lake, ledger, todo[among(todo["domain"], written)], key="domain",
                  name="accounts_ledger", crm=CRM, run_started=started,
                  where={d: f"Account/{ids[d]}" for d in written})  # fmt: skip
    counts.update(written=len(written), failed=int((results["status"] == "failed").sum()),
                  not_in_crm=missing)  # fmt: skip
    log.info("Salesforce Accounts: %(written)s written, %(unchanged)s unchanged, "
             "%(failed)s failed, %(not_in_crm)s without an Account", counts)  # fmt: skip
    return counts


# --- accounts as an enrichment provider -------------------------------------------------------

_REVENUE_BANDS = [(1e6, "<$1M"), (1e7, "$1M-$10M"), (5e7, "$10M-$50M"), (2.5e8, "$50M-$250M")]


def revenue_band(amount) -> str | None:
    """AnnualRevenue as the band enrichment uses elsewhere (None when unknown)."""
    if amount is None or pd.isna(amount):
        return None
    return next((band for limit, band in _REVENUE_BANDS if amount < limit), "$250M+")


def domain_of(website: str | None) -> str | None:
    """'https://www.Acme.io/about' → 'acme.io' (Account.Website is free text)."""
    if not website or not str(website).strip():
        return None
    host = str(website).strip().lower().split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    host = host.removeprefix("www.")
    return host or None


def read_accounts(sf) -> pd.DataFrame:
    """Firmographics of every Account with a website, by its domain (enrichment provider crm)."""
    rows = adapter(sf)(lambda s: s.query_all(
        "SELECT Website, NumberOfEmployees, Industry, BillingCountry, AnnualRevenue FROM Account"
    ))["records"]  # fmt: skip
    frame = pd.DataFrame(
        {
            "domain": [domain_of(r.get("Website")) for r in rows],
            "employees": [r.get("NumberOfEmployees") for r in rows],
            "industry": [r.get("Industry") for r in rows],
            "country": [r.get("BillingCountry") for r in rows],
            "revenue_band": [revenue_band(r.get("AnnualRevenue")) for r in rows],
        },
        columns=["domain", "employees", "industry", "country", "revenue_band"],
    )
    return frame[frame["domain"].notna()].reset_index(drop=True)
