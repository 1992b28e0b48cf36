"""Salesforce storage for the sandbox: object schema, save rules, SOQL, sessions and Bulk 2.0 jobs.

The HTTP emulator (sandbox.salesforce) and the seeding/inspection API (SalesforceStore, used
without HTTP by seeds and tests) share this module, so both apply the same rules. Data lives in the
sandbox SQLite file in tables prefixed `salesforce_`. Behaviour follows
docs/salesforce.md, cited below by section.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sandbox.state import SandboxState

API_VERSION = "59.0"  # simple-salesforce 1.12.10's default (docs/salesforce.md §9)
MIN_VERSION, MAX_VERSION = 20, 66
QUERY_BATCH = 2000  # records per query page (docs/salesforce.md §2)
MIN_QUERY_BATCH = 200
COLLECTION_LIMIT = 200  # sObject Collections create/update/upsert/delete (docs/salesforce.md §4)
RETRIEVE_LIMIT = 2000  # sObject Collections retrieve
CONVERT_LIMIT = 100  # leads per SOAP convertLead call
SOQL_MAX_LENGTH = 100_000
BULK_QUERY_PAGE = 50_000

KEY_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "OpportunityContactRole": "00K",
    "Lead": "00Q",
    "Task": "00T",
    "Event": "00U",
}
JOB_PREFIX, LOCATOR_PREFIX, ORG_PREFIX = "750", "01g", "00D"


# ---------------------------------------------------------------- errors (docs/salesforce.md §6)


class SalesforceError(Exception):
    """A whole-request error: HTTP status and Salesforce's JSON-array body
    (docs/salesforce.md §6)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[str] | None = None,
        more: list[dict] | None = None,
    ):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.fields = status, code, message, fields
        self.more = more or []  # further items of the body (several save errors at once)

    def body(self) -> list[dict]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = list(self.fields)
        return [item, *self.more]


def not_found() -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


@dataclass(frozen=True)
class SaveError:
    """One per-record save error (collections, Bulk, single-record writes): `statusCode`
    (docs/salesforce.md §4)."""

    code: str
    message: str
    fields: tuple[str, ...] = ()

    def to_api(self) -> dict:
        return {"statusCode": self.code, "message": self.message, "fields": list(self.fields)}

    def to_csv(self) -> str:
        """Bulk 2.0 `sf__Error`: `<STATUS_CODE>:<message>:<fields> --` (docs/salesforce.md §5)."""
        return f"{self.code}:{self.message}:{','.join(self.fields)} --".replace(": --", ":--")

    def to_error(self) -> SalesforceError:
        return SalesforceError(400, self.code, self.message, list(self.fields))


ROLLED_BACK = SaveError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone "
    "header",
)


# ---------------------------------------------------------------- ids


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-5]{3})?$")


def id18(id15: str) -> str:
    """The case-safe 18-character form of a 15-character id."""
    suffix = ""
    for chunk in range(3):
        flags = sum(1 << j for j, ch in enumerate(id15[chunk * 5 : chunk * 5 + 5]) if ch.isupper())
        suffix += _SUFFIX[flags]
    return id15 + suffix


def normalize_id(raw: Any) -> str | None:
    """A 15- or 18-character id -> the canonical 18-character id; None when malformed.

    18-character ids are case-insensitive: the suffix restores the case of the first 15.
    """
    if not isinstance(raw, str) or not _ID_RE.match(raw):
        return None
    if len(raw) == 15:
        return id18(raw)
    chars = list(raw[:15])
    for chunk in range(3):
        flags = _SUFFIX.find(raw[15 + chunk].upper())
        for j in range(5):
            i = chunk * 5 + j
            chars[i] = chars[i].upper() if flags >> j & 1 else chars[i].lower()
    canonical = id18("".join(chars))
    return canonical if canonical[15:] == raw[15:].upper() else None


def make_id(prefix: str, n: int) -> str:
    digits = ""
    while n:
        n, r = divmod(n, 62)
        digits = _B62[r] + digits
    return id18(f"{prefix}5e0{digits.rjust(9, '0')}")


ORG_ID = make_id(ORG_PREFIX, 1)
INTEGRATION_USER_ID = make_id(KEY_PREFIXES["User"], 1)  # the first id the store allocates


# ---------------------------------------------------------------- time


def fmt_datetime(moment: datetime) -> str:
    """Salesforce's JSON datetime: `2026-11-20T08:12:55.000+0000` (UTC, docs/salesforce.md §2)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(text: str) -> datetime | None:
    """ISO-8601 with `Z`, `+0000` or `+00:00` (naive = UTC), or a bare date (midnight UTC)."""
    text = text.strip()
    m = re.fullmatch(r"(.*[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)([+-]\d{2})(\d{2})", text)
    if m:
        text = f"{m.group(1)}{m.group(2)}:{m.group(3)}"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


def bulk_datetime(value: str) -> str:
    """Bulk query CSV datetimes are `...000Z` rather than `...000+0000` (docs/salesforce.md §5)."""
    return value[:-5] + "Z" if value.endswith("+0000") else value


# ---------------------------------------------------------------- schema


_DEFAULT_LENGTH = {
    "string": 255,
    "email": 80,
    "phone": 40,
    "url": 255,
    "picklist": 255,
    "textarea": 32000,
    "id": 18,
    "reference": 18,
}
_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}
TEXT_TYPES = {"string", "email", "picklist", "textarea", "phone", "url"}
NUMBER_TYPES = {"double", "currency", "percent", "int"}
FIELD_TYPES = TEXT_TYPES | NUMBER_TYPES | {"id", "reference", "boolean", "date", "datetime"}


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    defaulted: bool = False
    length: int = 0
    reference_to: tuple[str, ...] = ()
    relationship: str | None = None
    external_id: bool = False
    unique: bool = False
    custom: bool = False
    picklist: tuple[str, ...] = ()
    restricted: bool = False

    @property
    def required(self) -> bool:
        """Must be given on create (not nillable, no default; checkboxes default to false)."""
        return self.createable and not self.nillable and not self.defaulted

    def describe(self) -> dict:
        numeric = self.type in NUMBER_TYPES
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
            "length": self.length,
            "byteLength": self.length * 3,
            "digits": 9 if self.type == "int" else 0,
            "precision": 18 if numeric and self.type != "int" else 0,
            "scale": 2 if numeric and self.type != "int" else 0,
            "createable": self.createable,
            "updateable": self.updateable,
            "nillable": self.nillable,
            "defaultedOnCreate": self.defaulted or self.type == "boolean",
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.type == "id" or self.external_id or self.name == "Email",
            "caseSensitive": False,
            "custom": self.custom,
            "calculated": False,
            "filterable": self.type != "textarea",
            "sortable": self.type != "textarea",
            "groupable": self.type not in {"textarea", "double", "currency", "percent"},
            "nameField": self.name == "Name",
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship,
            "polymorphicForeignKey": len(self.reference_to) > 1,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "value": v, "validFor": None}
                for v in self.picklist
            ],
            "restrictedPicklist": self.restricted,
        }


def _f(
    name: str,
    type_: str,
    label: str | None = None,
    *,
    ro: bool = False,
    create: bool | None = None,
    update: bool | None = None,
    nil: bool = True,
    default: bool = False,
    length: int | None = None,
    ref: tuple[str, ...] = (),
    rel: str | None = None,
    picklist: tuple[str, ...] = (),
    restricted: bool = False,
    external_id: bool = False,
    unique: bool = False,
    custom: bool = False,
) -> FieldDef:
    return FieldDef(
        name=name,
        type=type_,
        label=label or name,
        createable=(not ro) if create is None else create,
        updateable=(not ro) if update is None else update,
        nillable=nil and type_ != "boolean",
        defaulted=default or type_ == "boolean",
        length=_DEFAULT_LENGTH.get(type_, 0) if length is None else length,
        reference_to=ref,
        relationship=rel,
        picklist=picklist,
        restricted=restricted,
        external_id=external_id,
        unique=unique,
        custom=custom,
    )


def _system(owner: bool = True) -> list[FieldDef]:
    user = ("User",)
    fields = [
        _f("Id", "id", "Record ID", ro=True, nil=False, default=True),
        _f("IsDeleted", "boolean", "Deleted", ro=True),
    ]
    if owner:
        fields.append(
            _f("OwnerId", "reference", "Owner ID", nil=False, default=True, ref=user, rel="Owner")
        )
    return fields + [
        _f("CreatedDate", "datetime", "Created Date", ro=True, nil=False, default=True),
        _f(
            "CreatedById",
            "reference",
            "Created By ID",
            ro=True,
            nil=False,
            default=True,
            ref=user,
            rel="CreatedBy",
        ),
        _f("LastModifiedDate", "datetime", "Last Modified Date", ro=True, nil=False, default=True),
        _f(
            "LastModifiedById",
            "reference",
            "Last Modified By ID",
            ro=True,
            nil=False,
            default=True,
            ref=user,
            rel="LastModifiedBy",
        ),
        _f("SystemModstamp", "datetime", "System Modstamp", ro=True, nil=False, default=True),
    ]


LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
CONVERTED_STATUSES = ("Closed - Converted",)  # the LeadStatus values whose IsConverted is true
LEAD_SOURCES = (
    "Web",
    "Phone Inquiry",
    "Partner Referral",
    "Purchased List",
    "Product Sign-up",
    "Other",
)
# StageName -> (IsClosed, IsWon, default Probability): the org's OpportunityStage settings
# (docs/salesforce.md §8).
STAGES = {
    "Prospecting": (False, False, 10),
    "Qualification": (False, False, 10),
    "Needs Analysis": (False, False, 20),
    "Value Proposition": (False, False, 50),
    "Id. Decision Makers": (False, False, 60),
    "Perception Analysis": (False, False, 70),
    "Proposal/Price Quote": (False, False, 75),
    "Negotiation/Review": (False, False, 90),
    "Closed Won": (True, True, 100),
    "Closed Lost": (True, False, 0),
}
OPEN_STAGE = next(s for s, (closed, _, _) in STAGES.items() if not closed)  # converted deals
TASK_STATUSES = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")
CLOSED_TASK_STATUSES = {"Completed"}
_WHO, _WHAT = ("Lead", "Contact"), ("Account", "Opportunity")


def _activity(task: bool) -> list[FieldDef]:
    common = [
        _f("Subject", "string", "Subject"),
        _f("WhoId", "reference", "Name ID", ref=_WHO, rel="Who"),
        _f("WhatId", "reference", "Related To ID", ref=_WHAT, rel="What"),
        _f("AccountId", "reference", "Account ID", ro=True, ref=("Account",), rel="Account"),
        _f("ActivityDate", "date", "Due Date Only"),
        _f("Type", "picklist", "Type", picklist=("Call", "Email", "Meeting", "Other")),
        _f("Description", "textarea", "Description"),
        _f("IsArchived", "boolean", "Archived", ro=True),
    ]
    if task:
        return common + [
            _f("Status", "picklist", "Status", nil=False, default=True, picklist=TASK_STATUSES),
            _f(
                "Priority",
                "picklist",
                "Priority",
                nil=False,
                default=True,
                picklist=("High", "Normal", "Low"),
            ),
            _f("IsClosed", "boolean", "Closed", ro=True),
            _f(
                "TaskSubtype",
                "picklist",
                "Task Subtype",
                update=False,
                default=True,
                picklist=("Task", "Email", "Call", "ListEmail", "Cadence"),
            ),
            _f("CompletedDateTime", "datetime", "Completed Date/Time", ro=True),
        ]
    return common + [
        _f("ActivityDateTime", "datetime", "Due Date Time"),
        _f("StartDateTime", "datetime", "Start Date Time"),
        _f("EndDateTime", "datetime", "End Date Time"),
        _f("DurationInMinutes", "int", "Duration"),
        _f("IsAllDayEvent", "boolean", "All-Day Event"),
        _f(
            "EventSubtype",
            "picklist",
            "Event Subtype",
            update=False,
            default=True,
            picklist=("Event",),
        ),
        _f("Location", "string", "Location"),
        _f("ShowAs", "picklist", "Show Time As", picklist=("Busy", "OutOfOffice", "Free")),
    ]


_STANDARD_FIELDS: dict[str, list[FieldDef]] = {
    "Lead": _system()
    + [
        _f("FirstName", "string", "First Name", length=40),
        _f("LastName", "string", "Last Name", length=80, nil=False),
        _f("Name", "string", "Full Name", ro=True, length=121),
        _f("Company", "string", "Company", nil=False),
        _f("Email", "email", "Email"),
        _f("Phone", "phone", "Phone"),
        _f("Title", "string", "Title", length=128),
        _f("Status", "picklist", "Status", nil=False, default=True, picklist=LEAD_STATUSES),
        _f("LeadSource", "picklist", "Lead Source", picklist=LEAD_SOURCES),
        _f("Industry", "picklist", "Industry"),
        _f("NumberOfEmployees", "int", "Employees"),
        _f("Website", "url", "Website"),
        _f("Country", "string", "Country", length=80),
        _f("Description", "textarea", "Description"),
        _f("IsConverted", "boolean", "Converted", ro=True),
        _f("ConvertedDate", "date", "Converted Date", ro=True),
        _f(
            "ConvertedAccountId",
            "reference",
            "Converted Account ID",
            ro=True,
            ref=("Account",),
            rel="ConvertedAccount",
        ),
        _f(
            "ConvertedContactId",
            "reference",
            "Converted Contact ID",
            ro=True,
            ref=("Contact",),
            rel="ConvertedContact",
        ),
        _f(
            "ConvertedOpportunityId",
            "reference",
            "Converted Opportunity ID",
            ro=True,
            ref=("Opportunity",),
            rel="ConvertedOpportunity",
        ),
        _f("LastActivityDate", "date", "Last Activity", ro=True),
    ],
    "Contact": _system()
    + [
        _f("AccountId", "reference", "Account ID", ref=("Account",), rel="Account"),
        _f("FirstName", "string", "First Name", length=40),
        _f("LastName", "string", "Last Name", length=80, nil=False),
        _f("Name", "string", "Full Name", ro=True, length=121),
        _f("Email", "email", "Email"),
        _f("Phone", "phone", "Business Phone"),
        _f("Title", "string", "Title", length=128),
        _f("Department", "string", "Department", length=80),
        _f("LeadSource", "picklist", "Lead Source", picklist=LEAD_SOURCES),
        _f("MailingCountry", "string", "Mailing Country", length=80),
        _f("Description", "textarea", "Contact Description"),
        _f("LastActivityDate", "date", "Last Activity", ro=True),
    ],
    "Account": _system()
    + [
        _f("Name", "string", "Account Name", nil=False),
        _f("Website", "url", "Website"),
        _f("Industry", "picklist", "Industry"),
        _f("NumberOfEmployees", "int", "Employees"),
        _f("AnnualRevenue", "currency", "Annual Revenue"),
        _f("BillingCountry", "string", "Billing Country", length=80),
        _f("Type", "picklist", "Account Type", picklist=("Prospect", "Customer", "Partner")),
        _f("Description", "textarea", "Account Description"),
    ],
    "Opportunity": _system()
    + [
        _f("AccountId", "reference", "Account ID", ref=("Account",), rel="Account"),
        _f("Name", "string", "Name", length=120, nil=False),
        _f("StageName", "picklist", "Stage", nil=False, picklist=tuple(STAGES), restricted=True),
        _f("CloseDate", "date", "Close Date", nil=False),
        _f("Amount", "currency", "Amount"),
        _f("Probability", "percent", "Probability (%)"),
        _f("IsClosed", "boolean", "Closed", ro=True),
        _f("IsWon", "boolean", "Won", ro=True),
        _f("Type", "picklist", "Opportunity Type", picklist=("New Business", "Existing Business")),
        _f("LeadSource", "picklist", "Lead Source", picklist=LEAD_SOURCES),
        _f("NextStep", "string", "Next Step", length=255),
        _f("Description", "textarea", "Description"),
    ],
    "OpportunityContactRole": _system(owner=False)
    + [
        _f(
            "OpportunityId",
            "reference",
            "Opportunity ID",
            update=False,
            nil=False,
            ref=("Opportunity",),
            rel="Opportunity",
        ),
        _f("ContactId", "reference", "Contact ID", nil=False, ref=("Contact",), rel="Contact"),
        _f(
            "Role",
            "picklist",
            "Role",
            picklist=(
                "Business User",
                "Decision Maker",
                "Economic Buyer",
                "Evaluator",
                "Influencer",
                "Technical Buyer",
                "Other",
            ),
        ),
        _f("IsPrimary", "boolean", "Primary"),
    ],
    "Event": _system() + _activity(task=False),
    "Task": _system() + _activity(task=True),
    "User": _system(owner=False)
    + [
        _f("Username", "string", "Username", length=80, nil=False, unique=True),
        _f("FirstName", "string", "First Name", length=40),
        _f("LastName", "string", "Last Name", length=80, nil=False),
        _f("Name", "string", "Full Name", ro=True, length=121),
        _f("Email", "email", "Email", nil=False),
        _f("Alias", "string", "Alias", length=8),
        _f("Title", "string", "Title", length=80),
        _f("IsActive", "boolean", "Active"),
    ],
}
_LABELS = {
    "OpportunityContactRole": ("Opportunity Contact Role", "Opportunity Contact Role"),
}

# Custom fields a PQL sync writes (docs/salesforce.md §8; the upsert key: §3);
# `salesforce_custom_fields` overrides them.
_PQL_FIELDS = {
    "PQL_Key__c": {
        "type": "string",
        "length": 80,
        "externalId": True,
        "unique": True,
        "label": "PQL Key",
    },
    "PQL_Score__c": {"type": "double", "label": "PQL Score"},
    "PQL_Flag__c": {"type": "boolean", "label": "PQL Flag"},
    "PQL_Qualified_At__c": {"type": "datetime", "label": "PQL Qualified At"},
    "PQL_Reasons__c": {"type": "textarea", "length": 32768, "label": "PQL Reasons"},
    "PQL_Model_Version__c": {"type": "string", "length": 80, "label": "PQL Model Version"},
}
# Account qualification (PQA) fields the account sync writes.
_PQA_FIELDS = {
    "PQA_Qualified__c": {"type": "boolean", "label": "PQA"},
    "PQA_Best_Score__c": {"type": "double", "label": "PQA Best User Score"},
    "PQA_Reasons__c": {"type": "textarea", "label": "PQA Reasons"},
}
DEFAULT_CUSTOM_FIELDS = {
    "Lead": dict(_PQL_FIELDS),
    "Contact": dict(_PQL_FIELDS),
    "Account": dict(_PQA_FIELDS),
}
# Reference fields not worth indexing (every record points at the one integration user).
_UNINDEXED = {"OwnerId", "CreatedById", "LastModifiedById"}


@dataclass(frozen=True)
class ObjectDef:
    name: str
    label: str
    plural: str
    prefix: str
    fields: tuple[FieldDef, ...]

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {f.name.lower(): f for f in self.fields})
        rels = {f.relationship.lower(): f for f in self.fields if f.relationship}
        object.__setattr__(self, "_by_rel", rels)

    def field(self, name: str) -> FieldDef | None:
        return self._by_name.get(name.lower())  # type: ignore[attr-defined]

    def relationship(self, name: str) -> FieldDef | None:
        return self._by_rel.get(name.lower())  # type: ignore[attr-defined]

    @property
    def indexed(self) -> list[FieldDef]:
        """Fields kept in salesforce_index: unique keys, Email and lookups (for fast WHERE)."""
        return [
            f
            for f in self.fields
            if f.unique
            or f.external_id
            or f.name == "Email"
            or (f.type == "reference" and f.name not in _UNINDEXED)
        ]

    def describe(self, version: str) -> dict:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return self.summary(version) | {
            "fields": [f.describe() for f in self.fields],
            "childRelationships": [],
            "recordTypeInfos": [],
            "urls": {
                "sobject": base,
                "describe": f"{base}/describe",
                "rowTemplate": f"{base}/{{ID}}",
                "uiNewRecord": "",
            },
        }

    def summary(self, version: str) -> dict:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.plural,
            "keyPrefix": self.prefix,
            "custom": False,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "retrieveable": True,
            "searchable": True,
            "layoutable": True,
            "replicateable": True,
            "triggerable": True,
            "undeletable": True,
            "urls": {
                "sobject": base,
                "describe": f"{base}/describe",
                "rowTemplate": f"{base}/{{ID}}",
            },
        }


def _custom_field(name: str, spec: Any) -> FieldDef:
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    type_ = spec.get("type", "string")
    if not name.endswith("__c") or type_ not in FIELD_TYPES - {"id", "reference"}:
        raise ValueError(f"custom field {name!r}: needs a __c name and a known type, not {type_}")
    return _f(
        name,
        type_,
        spec.get("label") or name[:-3].replace("_", " "),
        length=spec.get("length"),
        external_id=bool(spec.get("externalId")),
        unique=bool(spec.get("unique")),
        picklist=tuple(spec.get("picklist") or ()),
        restricted=bool(spec.get("restricted")),
        custom=True,
    )


class Schema:
    """Every object the sandbox knows, with the custom fields configured in the settings."""

    def __init__(self, custom: Mapping[str, Mapping[str, Any]]):
        self.objects: dict[str, ObjectDef] = {}
        for name, fields in _STANDARD_FIELDS.items():
            extra = [_custom_field(n, s) for n, s in (custom.get(name) or {}).items()]
            label, plural = _LABELS.get(name, (name, name + "s"))
            self.objects[name] = ObjectDef(
                name, label, plural, KEY_PREFIXES[name], (*fields, *extra)
            )
        self._lower = {n.lower(): o for n, o in self.objects.items()}
        self._prefix = {o.prefix: o for o in self.objects.values()}

    def get(self, name: str) -> ObjectDef | None:
        return self._lower.get(name.lower())

    def require(self, name: str) -> ObjectDef:
        obj = self.get(name)
        if obj is None:
            raise not_found()
        return obj

    def of_id(self, record_id: str) -> ObjectDef | None:
        return self._prefix.get(record_id[:3])


_SCHEMAS: dict[str, Schema] = {}
_SCHEMAS_LOCK = threading.Lock()


def schema_for(settings: Mapping) -> Schema:
    """The schema for these settings (`salesforce_custom_fields` replaces the PQL fields)."""
    custom = settings.get("salesforce_custom_fields")
    custom = DEFAULT_CUSTOM_FIELDS if custom is None else custom
    key = json.dumps(custom, sort_keys=True)
    with _SCHEMAS_LOCK:
        if key not in _SCHEMAS:
            _SCHEMAS[key] = Schema(custom)
        return _SCHEMAS[key]


# ---------------------------------------------------------------- values

_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_JAVA_TYPES = {
    "boolean": "boolean",
    "int": "int",
    "double": "double",
    "currency": "double",
    "percent": "double",
    "date": "java.util.Date",
    "datetime": "java.util.Date",
}


class _Mismatch(Exception):
    """A value that is not of the field's type (REST: a JSON parse error; Bulk: a row error)."""

    def __init__(self, fd: FieldDef, raw: Any):
        super().__init__(fd.name)
        self.fd, self.raw = fd, raw

    def rest_error(self) -> SalesforceError:
        kind = "VALUE_STRING" if isinstance(self.raw, str) else "VALUE_OTHER"
        message = (
            f"Cannot deserialize instance of {_JAVA_TYPES.get(self.fd.type, 'string')} from "
            f"{kind} value {self.raw} or request may be missing a required field at "
            "[line:1, column:1]"
        )
        return SalesforceError(400, "JSON_PARSER_ERROR", message)

    def save_error(self) -> SaveError:
        message = f"{self.fd.label}: value not of required type: {self.raw}"
        return SaveError("INVALID_TYPE_ON_FIELD_IN_RECORD", message, (self.fd.name,))


def _to_number(fd: FieldDef, raw: Any) -> float | int:
    if isinstance(raw, bool):
        raise _Mismatch(fd, raw)
    if isinstance(raw, int | float):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", raw):
        value = float(raw)
    else:
        raise _Mismatch(fd, raw)
    if fd.type == "int":
        if float(value) != int(value):
            raise _Mismatch(fd, raw)
        return int(value)
    return float(value)


def coerce(fd: FieldDef, raw: Any) -> tuple[Any, SaveError | None]:
    """A written value -> (stored value, validation error or None); _Mismatch on a type error."""
    if raw is None:
        return None, None
    t = fd.type
    if t == "boolean":
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true", None
        raise _Mismatch(fd, raw)
    if t in NUMBER_TYPES:
        return _to_number(fd, raw), None
    if t == "date":
        if isinstance(raw, str) and _DATE_RE.match(raw.strip()):
            try:
                return date.fromisoformat(raw.strip()).isoformat(), None
            except ValueError:
                pass
        moment = parse_datetime(raw) if isinstance(raw, str) else None
        if moment is None:
            raise _Mismatch(fd, raw)
        return moment.date().isoformat(), None
    if t == "datetime":
        moment = parse_datetime(raw) if isinstance(raw, str) else None
        if moment is None:
            raise _Mismatch(fd, raw)
        return fmt_datetime(moment), None
    if t in ("id", "reference"):
        value = normalize_id(raw)
        if value is None or (fd.reference_to and value[:3] not in _prefixes(fd)):
            message = f"{fd.label}: id value of incorrect type: {raw}"
            return None, SaveError("MALFORMED_ID", message, (fd.name,))
        return value, None
    if isinstance(raw, dict | list):
        raise _Mismatch(fd, raw)
    text = raw if isinstance(raw, str) else json.dumps(raw)
    if fd.length and len(text) > fd.length:
        message = f"{fd.label}: data value too large: {text[:40]} (max length={fd.length})"
        return None, SaveError("STRING_TOO_LONG", message, (fd.name,))
    if text == "":
        return None, None
    if t == "email" and text and not _EMAIL_RE.match(text):
        message = f"{fd.label}: invalid email address: {text}"
        return None, SaveError("INVALID_EMAIL_ADDRESS", message, (fd.name,))
    if fd.restricted and text not in fd.picklist:
        message = f"{fd.label}: bad value for restricted picklist field: {text}"
        return None, SaveError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message, (fd.name,))
    return text, None


def _prefixes(fd: FieldDef) -> set[str]:
    return {KEY_PREFIXES[t] for t in fd.reference_to}


def index_key(fd: FieldDef, value: Any) -> str | None:
    """How a value is kept in salesforce_index (and compared in SOQL =): ids exact, text folded."""
    if value is None:
        return None
    if fd.type in ("id", "reference"):
        return normalize_id(value) if isinstance(value, str) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).casefold()


# ---------------------------------------------------------------- storage

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS salesforce_records (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS salesforce_records_by_type ON salesforce_records (type, seq);
CREATE TABLE IF NOT EXISTS salesforce_index (
    type TEXT NOT NULL, field TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (type, field, key, id));
CREATE INDEX IF NOT EXISTS salesforce_index_by_id ON salesforce_index (id);
CREATE TABLE IF NOT EXISTS salesforce_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS salesforce_sessions (
    token TEXT PRIMARY KEY, grant_type TEXT NOT NULL, issued REAL NOT NULL,
    last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS salesforce_jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, info TEXT NOT NULL, upload TEXT,
    results TEXT, ready_at REAL);
"""
_READY: set[str] = set()
_READY_LOCK = threading.Lock()


def _ensure_schema(conn, db_path: str) -> None:
    with _READY_LOCK:
        if (
            db_path in _READY
            and conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'salesforce_jobs'"
            ).fetchone()
        ):
            return
    for statement in filter(str.strip, _SCHEMA_SQL.split(";")):
        conn.execute(statement)
    if not conn.execute("SELECT 1 FROM salesforce_counters WHERE name = 'id'").fetchone():
        conn.execute("INSERT INTO salesforce_counters VALUES ('id', 0)")
        tx = Tx(conn, schema_for({}), {})
        user = {
            "Username": "integration@pql-sandbox.example.com",
            "FirstName": "PQL",
            "LastName": "Integration",
            "Email": "integration@pql-sandbox.example.com",
            "Alias": "pqlint",
            "IsActive": True,
        }
        made = tx.save("User", "create", user, mode="system")
        assert made.id == INTEGRATION_USER_ID, made
    with _READY_LOCK:
        _READY.add(db_path)


@dataclass
class SaveResult:
    id: str | None
    created: bool
    errors: list[SaveError]

    @property
    def success(self) -> bool:
        return not self.errors

    def to_api(self, upsert: bool = False) -> dict:
        out: dict[str, Any] = {"id": self.id} if self.id else {}
        out |= {"success": self.success, "errors": [e.to_api() for e in self.errors]}
        if upsert:
            out["created"] = self.created
        return out


@dataclass
class LeadConvert:
    """One Lead to convert: the SOAP API's LeadConvert (ids of 15 or 18 characters)."""

    lead_id: Any
    converted_status: str | None = CONVERTED_STATUSES[0]
    account_id: Any = None  # attach to this Account, else one is made from Company
    contact_id: Any = None  # merge into this Contact, else one is made from the Lead
    opportunity_id: Any = None  # attach to this Opportunity (seeds) instead of making one
    create_opportunity: bool = True
    opportunity_name: str | None = None
    owner_id: Any = None  # owner of the records made (default: the Lead's owner)
    overwrite_lead_source: bool = False
    converted_on: date | None = None  # ConvertedDate; default today


@dataclass
class ConvertResult:
    """A LeadConvertResult: the ids converted into, or why nothing was."""

    lead_id: str | None
    account_id: str | None = None
    contact_id: str | None = None
    opportunity_id: str | None = None
    errors: list[SaveError] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.errors


def _stored(data: dict) -> str:
    return json.dumps({k: v for k, v in data.items() if not k.startswith("_")})


@dataclass
class Tx:
    """Everything the emulator does, inside one SQLite transaction (SalesforceStore.transaction).

    `lock` is asked before each API write whether that record is locked (UNABLE_TO_LOCK_ROW).
    """

    conn: Any
    schema: Schema
    settings: Mapping
    lock: Callable[[], bool] | None = None
    now: datetime = field(default_factory=now_utc)
    _cache: dict[str, dict | None] = field(default_factory=dict)

    # ---- reading

    def fetch(self, ids: Iterable[str]) -> dict[str, dict]:
        """Records by canonical id (deleted ones too; each has `_type` and `_seq`)."""
        ids = list(ids)
        wanted = [i for i in dict.fromkeys(ids) if i and i not in self._cache]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT id, type, seq, data FROM salesforce_records WHERE id IN ({marks})", chunk
            )
            found = {r["id"]: _loaded(r) for r in rows}
            for i in chunk:
                self._cache[i] = found.get(i)
        return {i: self._cache[i] for i in ids if i and self._cache.get(i) is not None}

    def get(self, record_id: str | None) -> dict | None:
        return self.fetch([record_id]).get(record_id) if record_id else None

    def live(self, record_id: str | None) -> dict | None:
        rec = self.get(record_id)
        return rec if rec is not None and not rec.get("IsDeleted") else None

    def scan(self, type_name: str, include_deleted: bool) -> list[dict]:
        sql = "SELECT id, type, seq, data FROM salesforce_records WHERE type = ?"
        if not include_deleted:
            sql += " AND deleted = 0"
        out = []
        for row in self.conn.execute(sql + " ORDER BY seq", (type_name,)):
            rec = self._cache.get(row["id"]) or _loaded(row)
            self._cache[row["id"]] = rec
            out.append(rec)
        return out

    def lookup(self, type_name: str, field_name: str, keys: Iterable[str]) -> list[str]:
        """Ids of records whose indexed `field_name` has one of `keys` (see index_key)."""
        keys, out = list(dict.fromkeys(keys)), []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out += [
                r["id"]
                for r in self.conn.execute(
                    "SELECT id FROM salesforce_index WHERE type = ? AND field = ? "
                    f"AND key IN ({marks})",
                    (type_name, field_name, *chunk),
                )
            ]
        return out

    def count(self, type_name: str) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM salesforce_records WHERE type = ? AND deleted = 0", (type_name,)
        ).fetchone()[0]

    # ---- writing

    def _next_id(self, prefix: str) -> tuple[str, int]:
        n = self.conn.execute(
            "UPDATE salesforce_counters SET value = value + 1 WHERE name = 'id' RETURNING value"
        ).fetchone()[0]
        return make_id(prefix, n), n

    def _put(self, obj: ObjectDef, rec: dict, new: bool) -> None:
        if new:
            self.conn.execute(
                "INSERT INTO salesforce_records (id, type, seq, deleted, data) VALUES (?,?,?,?,?)",
                (rec["Id"], obj.name, rec["_seq"], int(bool(rec["IsDeleted"])), _stored(rec)),
            )
        else:
            self.conn.execute(
                "UPDATE salesforce_records SET deleted = ?, data = ? WHERE id = ?",
                (int(bool(rec["IsDeleted"])), _stored(rec), rec["Id"]),
            )
            self.conn.execute("DELETE FROM salesforce_index WHERE id = ?", (rec["Id"],))
        rows = [
            (obj.name, fd.name, key, rec["Id"])
            for fd in obj.indexed
            if (key := index_key(fd, rec.get(fd.name))) is not None
        ]
        if rows and not rec["IsDeleted"]:
            self.conn.executemany("INSERT OR IGNORE INTO salesforce_index VALUES (?,?,?,?)", rows)
        self._cache[rec["Id"]] = rec

    def save(
        self,
        type_name: str,
        op: str,
        values: Mapping[str, Any],
        *,
        record_id: Any = None,
        ext_field: str | None = None,
        mode: str = "json",
    ) -> SaveResult:
        """Create, update, upsert or delete one record, with Salesforce's validation.

        mode: "json" (REST: a type mismatch raises a whole-request JSON_PARSER_ERROR), "csv"
        (Bulk: "" leaves a field unchanged, "#N/A" sets null, a mismatch fails the row) or
        "system" (seeds and tests: read-only fields such as IsConverted may be set, no locks).
        """
        obj = self.schema.require(type_name)
        values = dict(values)
        existing = None
        if op in ("update", "delete"):
            existing, error = self._target(obj, record_id)
            if error:
                return SaveResult(normalize_id(record_id) or None, False, [error])
            if op == "delete":
                return self._delete(obj, existing, mode)
        elif op == "upsert":
            existing, error = self._upsert_target(obj, ext_field or "Id", values, mode)
            if error:
                return SaveResult(None, False, [error])
            if ext_field and ext_field.lower() == "id":
                values = {k: v for k, v in values.items() if k.lower() != "id"}
        result = self._write(obj, values, existing, mode)
        if op == "upsert" and result.errors and existing is not None:
            result.id = existing["Id"]
        return result

    def _target(self, obj: ObjectDef, record_id: Any) -> tuple[dict | None, SaveError | None]:
        rid = normalize_id(record_id)
        if rid is None or rid[:3] != obj.prefix:
            label = f"{obj.label} ID"
            if record_id in (None, ""):
                return None, SaveError("MISSING_ARGUMENT", "Id not specified in an update call")
            return None, SaveError(
                "MALFORMED_ID", f"{label}: id value of incorrect type: {record_id}", ("Id",)
            )
        rec = self.get(rid)
        if rec is None:
            return None, SaveError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if rec.get("IsDeleted"):
            return None, SaveError("ENTITY_IS_DELETED", "entity is deleted")
        return rec, None

    def _upsert_target(
        self, obj: ObjectDef, ext_field: str, values: dict, mode: str
    ) -> tuple[dict | None, SaveError | None]:
        fd = obj.field(ext_field)
        if fd is None:
            message = f"No such column '{ext_field}' on sobject of type {obj.name}"
            return None, SaveError("INVALID_FIELD", message)
        if fd.name == "Id":
            given = next((v for k, v in values.items() if k.lower() == "id"), None)
            if given in (None, ""):
                return None, None
            return self._target(obj, given)
        if not (fd.external_id or fd.type == "id"):
            message = f"Field {fd.name} is not an external id field on {obj.name}"
            return None, SaveError("INVALID_FIELD", message, (fd.name,))
        raw = next((v for k, v in values.items() if k.lower() == fd.name.lower()), None)
        if raw is None or raw == "" or (mode == "csv" and raw == "#N/A"):
            return None, SaveError("MISSING_ARGUMENT", f"{fd.name} not specified")
        try:
            value, _ = coerce(fd, raw)
        except _Mismatch as bad:
            return None, bad.save_error()
        ids = self.lookup(obj.name, fd.name, [index_key(fd, value)])
        if len(ids) > 1:
            message = f"{fd.name}: more than one record found for external id field: {ids}"
            return None, SaveError("DUPLICATE_EXTERNAL_ID", message, (fd.name,))
        return (self.live(ids[0]) if ids else None), None

    def _delete(self, obj: ObjectDef, rec: dict, mode: str) -> SaveResult:
        if mode != "system" and self.lock and self.lock():
            return SaveResult(rec["Id"], False, [_lock_error(rec["Id"])])
        rec = dict(rec, IsDeleted=True)
        self._stamp(rec, new=False)
        self._put(obj, rec, new=False)
        return SaveResult(rec["Id"], False, [])

    def _write(self, obj: ObjectDef, values: dict, existing: dict | None, mode: str) -> SaveResult:
        new = existing is None
        rid = None if new else existing["Id"]
        given: dict[FieldDef, Any] = {}
        for name, raw in values.items():
            if name == "attributes" or (name.lower() == "id" and not new):
                continue
            if mode == "csv" and raw == "":
                continue  # Bulk: an empty cell leaves the field as it is (docs/salesforce.md §5)
            fd = obj.field(name)
            if fd is None:
                message = f"No such column '{name}' on sobject of type {obj.name}"
                return SaveResult(rid, False, [SaveError("INVALID_FIELD", message)])
            given[fd] = None if (mode == "csv" and raw == "#N/A") else raw
        if mode != "system":
            blocked = [fd.name for fd in given if not (fd.createable if new else fd.updateable)]
            if blocked:
                message = (
                    f"Unable to create/update fields: {', '.join(blocked)}. Please check the "
                    "security settings of this field and verify that it is read/write for your "
                    "profile or permission set."
                )
                error = SaveError("INVALID_FIELD_FOR_INSERT_UPDATE", message, tuple(blocked))
                return SaveResult(rid, False, [error])
            if self.lock and self.lock():
                return SaveResult(rid, False, [_lock_error(rid)])
            if not new and obj.name == "Lead" and existing.get("IsConverted"):
                error = SaveError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
                return SaveResult(rid, False, [error])
        clean, errors = {}, []
        for fd, raw in given.items():
            try:
                value, error = coerce(fd, raw)
            except _Mismatch as bad:
                if mode == "json":
                    raise bad.rest_error() from None
                errors.append(bad.save_error())
                continue
            if error:
                errors.append(error)
            else:
                clean[fd.name] = value
        rec = self._defaults(obj) if new else dict(existing)
        rec.update(clean)
        errors += self._references(obj, clean)
        if mode != "system":
            errors += self._inactive_owner(obj, clean)
        self._derive(obj, rec, clean, new)
        errors += _missing(obj, rec, clean, new)
        if not errors:
            errors += self._duplicates(obj, rec, clean)
        if errors:
            return SaveResult(rid, False, errors)
        if new:
            rec["Id"], rec["_seq"] = self._next_id(obj.prefix)
            rec["_type"] = obj.name
        self._stamp(rec, new, clean if mode == "system" else {})
        self._put(obj, rec, new)
        return SaveResult(rec["Id"], new, [])

    def _defaults(self, obj: ObjectDef) -> dict:
        rec: dict[str, Any] = {f.name: None for f in obj.fields}
        for f in obj.fields:
            if f.type == "boolean":
                rec[f.name] = f.name == "IsActive"
        if obj.field("OwnerId"):
            rec["OwnerId"] = INTEGRATION_USER_ID
        defaults = {
            "Lead": {"Status": LEAD_STATUSES[0]},
            "Task": {"Status": "Not Started", "Priority": "Normal", "TaskSubtype": "Task"},
            "Event": {"EventSubtype": "Event"},
        }
        rec.update(defaults.get(obj.name, {}))
        return rec

    def _stamp(self, rec: dict, new: bool, given: Mapping[str, Any] | None = None) -> None:
        """Audit fields; seeds may set CreatedDate/LastModifiedDate (like "Set Audit Fields")."""
        given = given or {}
        stamp = fmt_datetime(self.now)
        if new:
            rec["CreatedDate"] = given.get("CreatedDate") or stamp
            rec["CreatedById"] = INTEGRATION_USER_ID
        modified = given.get("LastModifiedDate") or given.get("SystemModstamp")
        modified = modified or (rec["CreatedDate"] if new and "CreatedDate" in given else stamp)
        rec["LastModifiedDate"] = rec["SystemModstamp"] = modified
        rec["LastModifiedById"] = INTEGRATION_USER_ID

    def _references(self, obj: ObjectDef, clean: dict) -> list[SaveError]:
        errors = []
        for name, value in clean.items():
            fd = obj.field(name)
            if fd.type == "reference" and value is not None and self.live(value) is None:
                message = "invalid cross reference id"
                errors.append(SaveError("INVALID_CROSS_REFERENCE_KEY", message, (fd.name,)))
        return errors

    def _inactive_owner(self, obj: ObjectDef, clean: dict) -> list[SaveError]:
        """A record given to a deactivated user is refused (e.g. a lead whose rep has left)."""
        owner = self.live(clean.get("OwnerId"))
        if owner is None or owner["_type"] != "User" or owner.get("IsActive"):
            return []
        message = (
            f"operation performed with inactive user [{owner['Id']}] as owner of "
            f"{obj.label.lower()}"
        )
        return [SaveError("INACTIVE_OWNER_OR_USER", message)]

    def _derive(self, obj: ObjectDef, rec: dict, clean: dict, new: bool) -> None:
        name = obj.name
        if name in ("Lead", "Contact", "User"):
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p)
            rec["Name"] = rec["Name"] or None
        elif name == "Opportunity" and rec.get("StageName") in STAGES:
            closed, won, probability = STAGES[rec["StageName"]]
            rec["IsClosed"], rec["IsWon"] = closed, won
            if "StageName" in clean and "Probability" not in clean:
                rec["Probability"] = float(probability)
        elif name in ("Event", "Task"):
            self._derive_activity(obj, rec, clean)

    def _derive_activity(self, obj: ObjectDef, rec: dict, clean: dict) -> None:
        if obj.name == "Event":
            start = clean.get("StartDateTime") or clean.get("ActivityDateTime")
            if start:
                rec["StartDateTime"] = rec["ActivityDateTime"] = start
                if not rec.get("IsAllDayEvent"):
                    rec["ActivityDate"] = start[:10]
            start = rec.get("StartDateTime")
            if start and "EndDateTime" in clean and rec.get("EndDateTime"):
                span = parse_datetime(rec["EndDateTime"]) - parse_datetime(start)
                rec["DurationInMinutes"] = int(span.total_seconds() // 60)
            elif start and rec.get("DurationInMinutes") is not None:
                end = parse_datetime(start) + timedelta(minutes=rec["DurationInMinutes"])
                rec["EndDateTime"] = fmt_datetime(end)
        else:
            closed = rec.get("Status") in CLOSED_TASK_STATUSES
            if closed and not rec.get("IsClosed") and not rec.get("CompletedDateTime"):
                rec["CompletedDateTime"] = fmt_datetime(self.now)
            rec["IsClosed"] = closed
        rec["AccountId"] = self._activity_account(rec)

    def _activity_account(self, rec: dict) -> str | None:
        who, what = self.live(rec.get("WhoId")), self.live(rec.get("WhatId"))
        if who is not None and who["_type"] == "Contact" and who.get("AccountId"):
            return who["AccountId"]
        if what is not None:
            return what["Id"] if what["_type"] == "Account" else what.get("AccountId")
        return None

    def _duplicates(self, obj: ObjectDef, rec: dict, clean: dict) -> list[SaveError]:
        errors = []
        for fd in obj.fields:
            if not fd.unique or fd.name not in clean or clean[fd.name] is None:
                continue
            others = [
                i
                for i in self.lookup(obj.name, fd.name, [index_key(fd, clean[fd.name])])
                if i != rec.get("Id")
            ]
            if others:
                message = (
                    f"duplicate value found: {fd.name} duplicates value on record with id: "
                    f"{others[0]}"
                )
                errors.append(SaveError("DUPLICATE_VALUE", message))
        return errors

    # ---- lead conversion (SOAP convertLead, seeds)

    def at(self, moment: datetime) -> Tx:
        """This transaction with its clock at `moment`: seeds writing history stamp it then."""
        return replace(self, now=moment)

    def convert_lead(self, c: LeadConvert) -> ConvertResult:
        """Convert one Lead as Salesforce does, all of it or (on any error) nothing.

        Makes or merges the Account and Contact (and makes an Opportunity with a primary contact
        role), marks the Lead converted (read-only from then on) and moves its Events and Tasks
        to the Contact. Records merged into only get their blank fields filled.
        """
        self.conn.execute("SAVEPOINT convert_lead")
        try:
            result = self._convert(c)
        except BaseException:
            self._undo("convert_lead")
            raise
        if result.errors:
            self._undo("convert_lead")
            result = ConvertResult(result.lead_id, errors=result.errors)
        self.conn.execute("RELEASE convert_lead")
        return result

    def _undo(self, savepoint: str) -> None:
        self.conn.execute(f"ROLLBACK TO {savepoint}")
        self._cache.clear()

    def _convert(self, c: LeadConvert) -> ConvertResult:
        rid = normalize_id(c.lead_id)
        result = ConvertResult(rid if rid and rid[:3] == KEY_PREFIXES["Lead"] else None)

        def finish(*errors: SaveError) -> ConvertResult:
            result.errors.extend(errors)
            return result

        lead, error = self._convert_ref("Lead", c.lead_id, "leadId")
        if error:
            return finish(error)
        if self.lock and self.lock():
            return finish(_lock_error(lead["Id"]))
        if lead.get("IsConverted"):
            return finish(
                SaveError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
            )
        if c.converted_status not in CONVERTED_STATUSES:
            message = f"invalid convertedStatus: {c.converted_status or ''}"
            return finish(SaveError("INVALID_STATUS", message))
        owner = lead.get("OwnerId")
        if c.owner_id not in (None, ""):
            user, error = self._convert_ref("User", c.owner_id, "ownerId")
            if error:
                return finish(error)
            if not user.get("IsActive"):
                message = f"operation performed with inactive user [{user['Id']}] as owner"
                return finish(SaveError("INACTIVE_OWNER_OR_USER", message))
            owner = user["Id"]
        account = contact = opportunity = None
        if c.account_id not in (None, ""):
            account, error = self._convert_ref("Account", c.account_id, "accountId")
            if error:
                return finish(error)
        if c.contact_id not in (None, ""):
            contact, error = self._convert_ref("Contact", c.contact_id, "contactId")
            if error:
                return finish(error)
            if account is not None and contact.get("AccountId") != account["Id"]:
                message = f"contactId {contact['Id']} is not a contact of account {account['Id']}"
                return finish(SaveError("INVALID_CROSS_REFERENCE_KEY", message))
            if account is None and contact.get("AccountId"):
                account = self.live(contact["AccountId"])
        if c.opportunity_id not in (None, ""):
            opportunity, error = self._convert_ref("Opportunity", c.opportunity_id, "opportunityId")
            if error:
                return finish(error)
            if account is not None and opportunity.get("AccountId") not in (None, account["Id"]):
                message = f"opportunityId {opportunity['Id']} is not on account {account['Id']}"
                return finish(SaveError("INVALID_CROSS_REFERENCE_KEY", message))
        mapped, errors = self._lead_mapping()
        if errors:
            return finish(*errors)

        values = _from_lead(lead, _TO_ACCOUNT)
        result.account_id, errors = self._merge("Account", account, values, owner)
        if errors:
            return finish(*errors)
        person = _from_lead(lead, _TO_CONTACT) | {"AccountId": result.account_id}
        person |= {target: lead.get(source) for source, target in mapped}
        # A Contact merged into is written even with no blank to fill: conversion updates it.
        source = {"LeadSource": lead.get("LeadSource")} if c.overwrite_lead_source else {}
        result.contact_id, errors = self._merge("Contact", contact, person, owner, always=source)
        if errors:
            return finish(*errors)
        if opportunity is not None:
            deal = _from_lead(lead, _TO_OPPORTUNITY) | {"AccountId": result.account_id}
            result.opportunity_id, errors = self._merge("Opportunity", opportunity, deal, owner)
        elif c.create_opportunity:
            result.opportunity_id, errors = self._convert_opportunity(lead, c, result, owner)
        if errors:
            return finish(*errors)
        converted = {
            "IsConverted": True,
            "Status": c.converted_status,
            "ConvertedDate": (c.converted_on or self.now.date()).isoformat(),
            "ConvertedAccountId": result.account_id,
            "ConvertedContactId": result.contact_id,
            "ConvertedOpportunityId": result.opportunity_id,
        }
        saved = self.save("Lead", "update", converted, record_id=lead["Id"], mode="system")
        errors = saved.errors or self._move_activities(lead["Id"], result)
        return finish(*errors)

    def _merge(
        self, type_name: str, rec: dict | None, values: dict, owner: str, always: dict | None = None
    ) -> tuple[str | None, list[SaveError]]:
        """Make a record from `values` (owned by `owner`), or fill the blanks of `rec` with them
        and write `always` over it (given, `rec` is written even with no blank to fill)."""
        if rec is None:
            made = self.save(type_name, "create", {**values, "OwnerId": owner}, mode="system")
            return made.id, made.errors
        blanks = {k: v for k, v in values.items() if v is not None and _blank(rec.get(k))}
        if not blanks and always is None:
            return rec["Id"], []
        changes = blanks | (always or {})
        saved = self.save(type_name, "update", changes, record_id=rec["Id"], mode="system")
        return rec["Id"], saved.errors

    def _convert_ref(
        self, type_name: str, raw: Any, arg: str
    ) -> tuple[dict | None, SaveError | None]:
        """A record a LeadConvert names: a live one of that type, else MALFORMED_ID (not an id),
        ENTITY_IS_DELETED (a deleted Lead) or INVALID_CROSS_REFERENCE_KEY."""
        if raw in (None, ""):
            return None, SaveError(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{arg}]"
            )
        rid = normalize_id(raw)
        if rid is None:
            return None, SaveError("MALFORMED_ID", f"{arg}: id value of incorrect type: {raw}")
        rec = self.get(rid)
        if rec is not None and rec["_type"] == type_name == "Lead" and rec.get("IsDeleted"):
            return None, SaveError("ENTITY_IS_DELETED", "entity is deleted")
        if rec is None or rec["_type"] != type_name or rec.get("IsDeleted"):
            return None, SaveError(
                "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {raw}"
            )
        return rec, None

    def _lead_mapping(self) -> tuple[list[tuple[str, str]], list[SaveError]]:
        """The org's Lead -> Contact field mapping (`salesforce_lead_field_mapping`), checked."""
        lead, contact = self.schema.require("Lead"), self.schema.require("Contact")
        pairs, errors = [], []
        for source, target in (self.settings.get("salesforce_lead_field_mapping") or {}).items():
            fs, ft = lead.field(source), contact.field(target)
            if fs is None or ft is None:
                name, obj = (source, "Lead") if fs is None else (target, "Contact")
                message = f"No such column '{name}' on sobject of type {obj} (lead field mapping)"
                errors.append(SaveError("INVALID_FIELD", message))
            elif not ft.createable:
                message = f"Unable to map lead field {fs.name} to {ft.name}: not writable"
                errors.append(SaveError("INVALID_FIELD_FOR_INSERT_UPDATE", message, (ft.name,)))
            else:
                pairs.append((fs.name, ft.name))
        return pairs, errors

    def _convert_opportunity(
        self, lead: dict, c: LeadConvert, result: ConvertResult, owner: str
    ) -> tuple[str | None, list[SaveError]]:
        """A new Opportunity (first open stage, closing at the quarter's end) and its primary
        contact role."""
        deal = _from_lead(lead, _TO_OPPORTUNITY) | {
            "Name": (c.opportunity_name or f"{lead.get('Company') or ''}-")[:120],
            "AccountId": result.account_id,
            "StageName": OPEN_STAGE,
            "CloseDate": _quarter_end(self.now.date()).isoformat(),
            "OwnerId": owner,
        }
        made = self.save("Opportunity", "create", deal, mode="system")
        if made.errors:
            return None, made.errors
        role = {"OpportunityId": made.id, "ContactId": result.contact_id, "IsPrimary": True}
        return made.id, self.save("OpportunityContactRole", "create", role, mode="system").errors

    def _move_activities(self, lead_id: str, result: ConvertResult) -> list[SaveError]:
        """The Lead's Events and Tasks go to the Contact (and to the Opportunity, if any)."""
        for kind in ("Event", "Task"):
            for activity_id in self.lookup(kind, "WhoId", [lead_id]):
                rec = self.live(activity_id)
                if rec is None or rec.get("WhoId") != lead_id:
                    continue
                values = {"WhoId": result.contact_id}
                if result.opportunity_id and not rec.get("WhatId"):
                    values["WhatId"] = result.opportunity_id
                saved = self.save(kind, "update", values, record_id=activity_id, mode="system")
                if saved.errors:
                    return saved.errors
        return []

    # ---- sessions

    def new_session(self, grant_type: str) -> str:
        token = f"{ORG_ID[:15]}!AQ8AQ{secrets.token_urlsafe(72)}".replace("-", "x").replace(
            "_", "y"
        )
        t = time.time()
        self.conn.execute(
            "INSERT INTO salesforce_sessions VALUES (?, ?, ?, ?)", (token, grant_type, t, t)
        )
        return token

    def touch_session(self, token: str, timeout_s: float) -> bool:
        """Whether the session is live (not idle for longer than timeout_s); refreshes it."""
        row = self.conn.execute(
            "SELECT last_used FROM salesforce_sessions WHERE token = ?", (token,)
        ).fetchone()
        t = time.time()
        if row is None or t - row["last_used"] > timeout_s:
            return False
        if t - row["last_used"] > 1:
            self.conn.execute(
                "UPDATE salesforce_sessions SET last_used = ? WHERE token = ?", (t, token)
            )
        return True


# Standard Lead fields Salesforce maps on conversion (Lead field -> target field).
_TO_ACCOUNT = {
    "Company": "Name",
    "Website": "Website",
    "Industry": "Industry",
    "NumberOfEmployees": "NumberOfEmployees",
    "Country": "BillingCountry",
}
_TO_CONTACT = {
    "FirstName": "FirstName",
    "LastName": "LastName",
    "Email": "Email",
    "Phone": "Phone",
    "Title": "Title",
    "LeadSource": "LeadSource",
    "Description": "Description",
    "Country": "MailingCountry",
}
_TO_OPPORTUNITY = {"LeadSource": "LeadSource"}


def _from_lead(lead: dict, mapping: Mapping[str, str]) -> dict:
    return {target: lead.get(source) for source, target in mapping.items()}


def _blank(value: Any) -> bool:
    """Whether conversion may fill a field: empty text or null (a checkbox is never blank)."""
    return value is None or value == ""


def _quarter_end(day: date) -> date:
    """The last day of `day`'s calendar quarter (a converted Opportunity's CloseDate)."""
    month = (day.month - 1) // 3 * 3 + 3
    return date(day.year + month // 12, month % 12 + 1, 1) - timedelta(days=1)


def _loaded(row) -> dict:
    rec = json.loads(row["data"])
    rec["_type"], rec["_seq"] = row["type"], row["seq"]
    return rec


def _lock_error(record_id: str | None) -> SaveError:
    message = "unable to obtain exclusive access to this record"
    if record_id:
        message += f" or 1 records: {record_id}"
    return SaveError("UNABLE_TO_LOCK_ROW", message)


def _missing(obj: ObjectDef, rec: dict, clean: dict, new: bool) -> list[SaveError]:
    names = [
        f.name
        for f in obj.fields
        if not f.nillable
        and f.createable
        and rec.get(f.name) is None
        and (new or f.name in clean)
        and f.name != "Id"
    ]
    if obj.name == "Event" and new and not rec.get("IsAllDayEvent"):
        names += [n for n in ("ActivityDateTime", "DurationInMinutes") if rec.get(n) is None]
    elif obj.name == "Event" and new and rec.get("ActivityDate") is None:
        names.append("ActivityDate")
    if not names:
        return []
    return [
        SaveError(
            "REQUIRED_FIELD_MISSING",
            f"Required fields are missing: [{', '.join(names)}]",
            tuple(names),
        )
    ]


# ---------------------------------------------------------------- SOQL (docs/salesforce.md §2)

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:])
  | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+))(?![\w.])
  | (?P<op><>|!=|<=|>=|=|<|>)
  | (?P<punct>[(),:])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_DATE_FUNCTIONS = {"TODAY", "YESTERDAY", "TOMORROW", "LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"}
_RESERVED = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "NULLS",
    "FIRST",
    "LAST",
    "LIMIT",
    "OFFSET",
    "NULL",
    "TRUE",
    "FALSE",
    "GROUP",
    "HAVING",
    "WITH",
    "FOR",
    "USING",
    "TYPEOF",
    "INCLUDES",
    "EXCLUDES",
}


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int
    value: Any = None

    def word(self) -> str:
        return self.text.upper() if self.kind == "ident" else ""


@dataclass(frozen=True)
class FieldPath:
    """A field in a SOQL statement: lookups to follow (`refs`), then the field itself."""

    text: str  # canonical, e.g. "Opportunity.IsWon"
    refs: tuple[tuple[str, str], ...]  # (reference field, relationship name) per hop
    name: str  # the field's canonical name on the last object
    fd: FieldDef  # its definition (for polymorphic hops: on the first type that has it)
    poly_type: bool = False  # `Who.Type`: the sObject type of a polymorphic lookup


@dataclass(frozen=True)
class Literal:
    kind: str  # string number boolean null date datetime range
    value: Any
    pos: int
    text: str


@dataclass
class Soql:
    obj: ObjectDef
    fields: list[FieldPath]
    count: bool
    where: tuple | None
    order: list[tuple[FieldPath, bool, bool]]  # path, descending, nulls first
    limit: int | None
    offset: int


def _locate(soql: str, pos: int, message: str) -> str:
    row = soql.count("\n", 0, pos) + 1
    col = pos - (soql.rfind("\n", 0, pos) + 1) + 1
    line = soql.splitlines()[row - 1] if soql.strip() else ""
    echo = f"\n{line}\n{' ' * (col - 1)}^" if len(line) <= 1000 else ""
    return f"{echo}\nERROR at Row:{row}:Column:{col}\n{message}"


def _tokenize(soql: str) -> list[_Tok]:
    toks, pos = [], 0
    while pos < len(soql):
        m = _TOKEN_RE.match(soql, pos)
        if m is None:
            bad = soql[pos]
            message = "Unterminated string literal" if bad == "'" else f"unexpected token: '{bad}'"
            raise SalesforceError(400, "MALFORMED_QUERY", _locate(soql, pos, message))
        kind = m.lastgroup
        if kind != "ws":
            tok = _Tok(kind, m.group(), pos)
            if kind == "string":
                tok.value = _unescape(soql, pos, m.group()[1:-1])
            toks.append(tok)
        pos = m.end()
    toks.append(_Tok("eof", "<EOF>", len(soql)))
    return toks


def _unescape(soql: str, pos: int, body: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt.lower() in _ESCAPES or nxt in "'\"\\":
            out.append(_ESCAPES.get(nxt.lower(), nxt))
            i += 2
        elif nxt in "%_":
            out.append("\\" + nxt)  # kept for LIKE; a plain comparison drops the backslash
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            message = f"Invalid string literal '{body}'. Illegal Escape sequence '\\{nxt}'"
            raise SalesforceError(400, "MALFORMED_QUERY", _locate(soql, pos, message))
    return "".join(out)


class _Parser:
    def __init__(self, soql: str, schema: Schema):
        self.soql, self.schema = soql, schema
        self.toks = _tokenize(soql)
        self.i = 0

    # -- token helpers

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, *words: str) -> bool:
        return self.tok.word() in words

    def accept(self, *words: str) -> bool:
        if self.at(*words):
            self.i += 1
            return True
        return False

    def punct(self, ch: str) -> bool:
        if self.tok.kind == "punct" and self.tok.text == ch:
            self.i += 1
            return True
        return False

    def malformed(self, tok: _Tok | None = None, message: str | None = None) -> SalesforceError:
        tok = tok or self.tok
        text = message or f"unexpected token: '{tok.text}'"
        return SalesforceError(400, "MALFORMED_QUERY", _locate(self.soql, tok.pos, text))

    def expect(self, word: str) -> None:
        if not self.accept(word):
            raise self.malformed()

    def expect_punct(self, ch: str) -> None:
        if not self.punct(ch):
            raise self.malformed()

    # -- grammar

    def parse(self) -> Soql:
        if len(self.soql) > SOQL_MAX_LENGTH:
            raise SalesforceError(
                400, "MALFORMED_QUERY", "SOQL statements cannot be longer than 100,000 characters."
            )
        self.expect("SELECT")
        count, raw_fields = False, []
        if self.at("COUNT") and self.toks[self.i + 1].text == "(":
            self.i += 1
            self.expect_punct("(")
            self.expect_punct(")")
            count = True
        else:
            raw_fields.append(self._ident())
            while self.punct(","):
                raw_fields.append(self._ident())
        self.expect("FROM")
        type_tok = self.take()
        obj = self.schema.get(type_tok.text) if type_tok.kind == "ident" else None
        if type_tok.kind != "ident" or type_tok.word() in _RESERVED:
            raise self.malformed(type_tok)
        if obj is None:
            message = (
                f"sObject type '{type_tok.text}' is not supported. If you are attempting to use a "
                "custom object, be sure to append the '__c' after the entity name. Please "
                "reference your WSDL or the describe call for the appropriate names."
            )
            raise SalesforceError(400, "INVALID_TYPE", _locate(self.soql, type_tok.pos, message))
        self.obj = obj
        fields, seen = [], set()
        for tok in raw_fields:
            path = self._path(tok)
            if path.text.lower() in seen:
                message = f"duplicate field selected: {path.text}"
                raise SalesforceError(400, "INVALID_FIELD", _locate(self.soql, tok.pos, message))
            seen.add(path.text.lower())
            fields.append(path)
        where = None
        if self.accept("WHERE"):
            where = self._condition()
        order = []
        if self.accept("ORDER"):
            self.expect("BY")
            order.append(self._order_item())
            while self.punct(","):
                order.append(self._order_item())
        limit = self._int_clause("LIMIT")
        offset = self._int_clause("OFFSET") or 0
        if self.tok.kind != "eof":
            raise self.malformed()
        return Soql(obj, fields, count, where, order, limit, offset)

    def _ident(self) -> _Tok:
        tok = self.take()
        if tok.kind != "ident" or tok.word() in _RESERVED:
            raise self.malformed(tok)
        if self.tok.text == "(":  # FIELDS(ALL), aggregate functions, toLabel(...) ...
            raise self.malformed(self.tok)
        return tok

    def _int_clause(self, word: str) -> int | None:
        if not self.accept(word):
            return None
        tok = self.take()
        if tok.kind != "number" or not tok.text.isdigit():
            raise self.malformed(tok)
        return int(tok.text)

    def _order_item(self) -> tuple[FieldPath, bool, bool]:
        path = self._path(self._ident())
        desc = self.accept("DESC")
        if not desc:
            self.accept("ASC")
        nulls_first = not desc
        if self.accept("NULLS"):
            if self.accept("FIRST"):
                nulls_first = True
            else:
                self.expect("LAST")
                nulls_first = False
        return path, desc, nulls_first

    def _condition(self) -> tuple:
        """Conditions joined by AND or by OR; mixing them needs parentheses (as in SOQL)."""
        items = [self._unary()]
        joiner = None
        while self.at("AND", "OR"):
            word = self.tok.word()
            if joiner and word != joiner:
                raise self.malformed()
            joiner = word
            self.i += 1
            items.append(self._unary())
        return items[0] if len(items) == 1 else (joiner.lower(), items)

    def _unary(self) -> tuple:
        if self.accept("NOT"):
            return ("not", self._unary())
        if self.punct("("):
            node = self._condition()
            self.expect_punct(")")
            return node
        return self._comparison()

    def _comparison(self) -> tuple:
        tok = self._ident()
        path = self._path(tok)
        if self.tok.kind == "op":
            op = self.take().text
            op = "!=" if op == "<>" else op
            lit = self._literal()
            self._check_literal(path, lit, op)
            return ("cmp", path, op, lit)
        negate = self.accept("NOT")
        if self.accept("IN"):
            self.expect_punct("(")
            if self.at("SELECT"):
                raise self.malformed(message="semi-join subqueries are not supported here")
            lits = [self._literal()]
            while self.punct(","):
                lits.append(self._literal())
            self.expect_punct(")")
            for lit in lits:
                self._check_literal(path, lit, "=")
            return ("in", path, negate, lits)
        if not negate and self.accept("LIKE"):
            lit = self._literal()
            if lit.kind != "string" or path.fd.type not in TEXT_TYPES | {"id", "reference"}:
                message = f"invalid operator on {path.fd.type} field: LIKE"
                raise SalesforceError(
                    400, "INVALID_QUERY_FILTER_OPERATOR", _locate(self.soql, lit.pos, message)
                )
            return ("like", path, _like_regex(lit.value))
        raise self.malformed()

    def _literal(self) -> Literal:
        tok = self.take()
        if tok.kind == "string":
            return Literal("string", tok.value, tok.pos, tok.text)
        if tok.kind == "number":
            return Literal("number", float(tok.text), tok.pos, tok.text)
        if tok.kind == "date":
            try:
                return Literal("date", date.fromisoformat(tok.text).isoformat(), tok.pos, tok.text)
            except ValueError:
                raise self.malformed(tok) from None
        if tok.kind == "datetime":
            moment = parse_datetime(tok.text)
            if moment is None:
                raise self.malformed(tok)
            return Literal("datetime", fmt_datetime(moment), tok.pos, tok.text)
        word = tok.word()
        if word in ("TRUE", "FALSE"):
            return Literal("boolean", word == "TRUE", tok.pos, tok.text)
        if word == "NULL":
            return Literal("null", None, tok.pos, tok.text)
        if word in _DATE_FUNCTIONS:
            n = None
            if word.endswith("_DAYS") or word == "N_DAYS_AGO":
                self.expect_punct(":")
                num = self.take()
                if num.kind != "number" or not num.text.isdigit():
                    raise self.malformed(num)
                n = int(num.text)
            return Literal("range", _date_range(word, n), tok.pos, tok.text)
        raise self.malformed(tok)

    def _check_literal(self, path: FieldPath, lit: Literal, op: str) -> None:
        t = path.fd.type
        if lit.kind == "null":
            if op not in ("=", "!="):
                raise self.malformed(message=f"invalid operator on null: {op}")
            return
        if path.poly_type or t in TEXT_TYPES:
            ok = lit.kind == "string"
        elif t in ("id", "reference"):
            ok = lit.kind == "string"
            if ok and normalize_id(lit.value) is None:
                message = f"invalid ID field: {lit.value}"
                raise SalesforceError(
                    400, "INVALID_QUERY_FILTER_OPERATOR", _locate(self.soql, lit.pos, message)
                )
        elif t in NUMBER_TYPES:
            ok = lit.kind == "number"
        elif t == "boolean":
            ok = lit.kind == "boolean" and op in ("=", "!=")
        elif t == "date":
            ok = lit.kind in ("date", "range")
        else:
            ok = lit.kind in ("datetime", "range")
        if not ok:
            soql_type = {"datetime": "dateTime", "reference": "id"}.get(t, t)
            quoted = "be" if t in TEXT_TYPES | {"id", "reference"} else "not be"
            if t in NUMBER_TYPES:
                soql_type = "number"
            message = (
                f"value of filter criterion for field '{path.text}' must be of type "
                f"{'string' if t in TEXT_TYPES else soql_type} and should {quoted} enclosed in "
                "quotes"
            )
            raise SalesforceError(400, "INVALID_FIELD", _locate(self.soql, lit.pos, message))

    def _path(self, tok: _Tok) -> FieldPath:
        parts = tok.text.split(".")
        if len(parts) > 1 and parts[0].lower() == self.obj.name.lower():
            parts = parts[1:]  # `SELECT Lead.Email FROM Lead` is allowed
        types, refs, canonical = [self.obj], [], []
        for hop in parts[:-1]:
            fd = next((f for o in types if (f := o.relationship(hop))), None)
            if fd is None:
                message = (
                    f"Didn't understand relationship '{hop}' in field path. If you are attempting "
                    "to use a custom relationship, be sure to append the '__r' after the custom "
                    "relationship name. Please reference your WSDL or the describe call for the "
                    "appropriate names."
                )
                raise SalesforceError(400, "INVALID_FIELD", _locate(self.soql, tok.pos, message))
            refs.append((fd.name, fd.relationship))
            canonical.append(fd.relationship)
            types = [self.schema.objects[t] for t in fd.reference_to]
        last = parts[-1]
        poly = len(types) > 1
        if poly and last.lower() == "type":
            fd = _f("Type", "string", "Type", ro=True)
            return FieldPath(".".join([*canonical, "Type"]), tuple(refs), "Type", fd, True)
        fd = next((f for o in types if (f := o.field(last))), None)
        if fd is None:
            entity = types[0].name if len(types) == 1 else "Name"
            message = (
                f"No such column '{last}' on entity '{entity}'. If you are attempting to use a "
                "custom field, be sure to append the '__c' after the custom field name. Please "
                "reference your WSDL or the describe call for the appropriate names."
            )
            raise SalesforceError(400, "INVALID_FIELD", _locate(self.soql, tok.pos, message))
        return FieldPath(".".join([*canonical, fd.name]), tuple(refs), fd.name, fd)


def _like_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _date_range(word: str, n: int | None) -> tuple[datetime, datetime]:
    today = datetime.combine(now_utc().date(), datetime.min.time(), UTC)
    day = timedelta(days=1)
    return {
        "TODAY": (today, today + day),
        "YESTERDAY": (today - day, today),
        "TOMORROW": (today + day, today + 2 * day),
        "LAST_N_DAYS": (today - (n or 0) * day, today + day),
        "NEXT_N_DAYS": (today + day, today + ((n or 0) + 1) * day),
        "N_DAYS_AGO": (today - (n or 0) * day, today - ((n or 0) - 1) * day),
    }[word]


def parse_soql(soql: str, schema: Schema) -> Soql:
    """Parse the SOQL subset the sandbox supports; anything else is MALFORMED_QUERY (400)."""
    if not isinstance(soql, str) or not soql.strip():
        raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
    return _Parser(soql, schema).parse()


# ---------------------------------------------------------------- SOQL evaluation


def _comparable(fd: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if fd.type in TEXT_TYPES:
        return str(value).casefold()
    if fd.type in NUMBER_TYPES:
        return float(value)
    return value


def _literal_value(fd: FieldDef, lit: Literal) -> Any:
    if lit.kind == "range":
        lo, hi = lit.value
        if fd.type == "date":
            return (lo.date().isoformat(), hi.date().isoformat())
        return (fmt_datetime(lo), fmt_datetime(hi))
    if lit.kind == "string":
        text = re.sub(r"\\([%_])", r"\1", lit.value)
        if fd.type in ("id", "reference"):
            return normalize_id(text)
        return text.casefold()
    return lit.value


def _compare(op: str, value: Any, lit: Any, kind: str) -> bool:
    if kind == "null":
        return (value is None) if op == "=" else (value is not None)
    if value is None:
        return op == "!="
    if kind == "range":
        lo, hi = lit
        return {
            "=": lo <= value < hi,
            "!=": not lo <= value < hi,
            ">": value >= hi,
            ">=": value >= lo,
            "<": value < lo,
            "<=": value < hi,
        }[op]
    return {
        "=": value == lit,
        "!=": value != lit,
        ">": value > lit,
        ">=": value >= lit,
        "<": value < lit,
        "<=": value <= lit,
    }[op]


class _Evaluator:
    """Reads field paths off records, following lookups through a Tx."""

    def __init__(self, tx: Tx, archive_days: int):
        self.tx = tx
        self.archive_before = (now_utc() - timedelta(days=archive_days)).date().isoformat()

    def follow(self, rec: dict | None, path: FieldPath) -> dict | None:
        for ref_field, _ in path.refs:
            if rec is None:
                return None
            rec = self.tx.get(rec.get(ref_field))
        return rec

    def raw(self, rec: dict, path: FieldPath) -> Any:
        target = self.follow(rec, path)
        if target is None:
            return None
        if path.poly_type:
            return target["_type"]
        if path.name == "IsArchived":
            return self.archived(target)
        return target.get(path.name)

    def archived(self, rec: dict) -> bool:
        """Events and closed Tasks older than the archive age (docs/salesforce.md §2 queryAll)."""
        if rec["_type"] not in ("Event", "Task"):
            return False
        if rec["_type"] == "Task" and not rec.get("IsClosed"):
            return False
        day = rec.get("ActivityDate") or (rec.get("CreatedDate") or "")[:10]
        return bool(day) and day < self.archive_before

    def value(self, rec: dict, path: FieldPath) -> Any:
        raw = self.raw(rec, path)
        return raw.casefold() if path.poly_type and raw else _comparable(path.fd, raw)

    def matches(self, rec: dict, node: tuple | None) -> bool:
        if node is None:
            return True
        kind = node[0]
        if kind == "and":
            return all(self.matches(rec, n) for n in node[1])
        if kind == "or":
            return any(self.matches(rec, n) for n in node[1])
        if kind == "not":
            return not self.matches(rec, node[1])
        if kind == "cmp":
            _, path, op, lit = node
            return _compare(op, self.value(rec, path), _literal_value(path.fd, lit), lit.kind)
        if kind == "in":
            _, path, negate, lits = node
            value = self.value(rec, path)
            hit = any(
                lit.kind != "null" and value is not None and value == _literal_value(path.fd, lit)
                for lit in lits
            ) or (value is None and any(lit.kind == "null" for lit in lits))
            return not hit if negate else hit
        _, path, regex = node
        value = self.raw(rec, path)
        return value is not None and regex.fullmatch(str(value)) is not None


def _pushdown(obj: ObjectDef, node: tuple | None) -> tuple[str, list[str]] | None:
    """An indexed equality/IN test that every matching record passes (to avoid a full scan)."""
    if node is None:
        return None
    candidates = node[1] if node[0] == "and" else [node]
    for cand in candidates:
        if cand[0] not in ("cmp", "in") or cand[1].refs:
            continue
        path = cand[1]
        if cand[0] == "cmp" and cand[2] != "=":
            continue
        if cand[0] == "in" and cand[2]:
            continue
        lits = [cand[3]] if cand[0] == "cmp" else cand[3]
        if any(lit.kind != "string" for lit in lits):
            continue
        if path.fd.name == "Id" or path.fd in obj.indexed:
            keys = [index_key(path.fd, re.sub(r"\\([%_])", r"\1", lit.value)) for lit in lits]
            return path.fd.name, [k for k in keys if k is not None]
    return None


@dataclass
class QueryResult:
    soql: Soql
    total: int
    records: list[dict]  # matching records, ordered and limited (not yet rendered)
    evaluator: _Evaluator


def run_query(tx: Tx, q: Soql, include_deleted: bool) -> QueryResult:
    ev = _Evaluator(tx, int(tx.settings.get("salesforce_archive_days", 365)))
    pushed = _pushdown(q.obj, q.where)
    if pushed is None:
        candidates = tx.scan(q.obj.name, include_deleted)
    else:
        name, keys = pushed
        ids = keys if name == "Id" else tx.lookup(q.obj.name, name, keys)
        found = tx.fetch(ids)
        candidates = sorted(
            (r for r in found.values() if r["_type"] == q.obj.name),
            key=lambda r: r["_seq"],
        )
        if not include_deleted:
            candidates = [r for r in candidates if not r.get("IsDeleted")]
    if not include_deleted:
        candidates = [r for r in candidates if not ev.archived(r)]
    rows = [r for r in candidates if ev.matches(r, q.where)]
    for path, desc, nulls_first in reversed(q.order):
        rows.sort(key=_sort_key(ev, path, desc, nulls_first), reverse=desc)
    rows = rows[q.offset :]
    if q.limit is not None:
        rows = rows[: q.limit]
    return QueryResult(q, len(rows), [] if q.count else rows, ev)


def _sort_key(ev: _Evaluator, path: FieldPath, desc: bool, nulls_first: bool):
    null_rank = (2 if nulls_first else 0) if desc else (0 if nulls_first else 2)

    def key(rec: dict):
        value = ev.value(rec, path)
        return (null_rank, 0) if value is None else (1, value)

    return key


def record_url(version: str, type_name: str, record_id: str) -> str:
    return f"/services/data/v{version}/sobjects/{type_name}/{record_id}"


def render(result: QueryResult, rec: dict, version: str) -> dict:
    """One query record as JSON: attributes, then the selected fields (lookups nested)
    (docs/salesforce.md §2)."""
    ev = result.evaluator
    out: dict[str, Any] = {"attributes": _attributes(rec, version)}
    for path in result.soql.fields:
        target, cur = out, rec
        for ref_field, rel in path.refs:
            nxt = ev.tx.get(cur.get(ref_field)) if cur is not None else None
            if rel not in target:
                target[rel] = {"attributes": _attributes(nxt, version)} if nxt else None
            if target[rel] is None:
                cur = None
                break
            target, cur = target[rel], nxt
        if cur is None:
            continue
        if path.poly_type:
            target["Type"] = cur["_type"]
        elif path.name == "IsArchived":
            target[path.name] = ev.archived(cur)
        else:
            target[path.name] = cur.get(path.name)
    return out


def _attributes(rec: dict, version: str) -> dict:
    return {"type": rec["_type"], "url": record_url(version, rec["_type"], rec["Id"])}


def full_record(obj: ObjectDef, rec: dict, version: str, fields: list[str] | None = None) -> dict:
    """A record as GET sobjects/<Type>/<id> returns it: every field (or those asked for)."""
    names = [f.name for f in obj.fields] if fields is None else fields
    out: dict[str, Any] = {"attributes": _attributes(rec, version)}
    for name in names:
        fd = obj.field(name)
        if fd is None:
            message = f"No such column '{name}' on sobject of type {obj.name}"
            raise SalesforceError(400, "INVALID_FIELD", message)
        out[fd.name] = rec.get(fd.name) if fd.name != "IsArchived" else False
    return out


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*\+0000", value):
        return bulk_datetime(value)
    return str(value)


def render_csv_row(result: QueryResult, rec: dict) -> list[str]:
    ev = result.evaluator
    return [csv_value(ev.raw(rec, path)) for path in result.soql.fields]


# ------------------------------------------------------------- Bulk API 2.0 (docs/salesforce.md §5)

DELIMITERS = {
    "COMMA": ",",
    "TAB": "\t",
    "PIPE": "|",
    "SEMICOLON": ";",
    "CARET": "^",
    "BACKQUOTE": "`",
}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
INGEST_OPERATIONS = {"insert", "update", "upsert", "delete", "hardDelete"}
TERMINAL_STATES = {"JobComplete", "Failed", "Aborted"}


def csv_text(rows: list[list[str]], line_ending: str, delimiter: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=line_ending, quoting=csv.QUOTE_ALL)
    writer.writerows(rows)
    return buf.getvalue()


def job_info(kind: str, job_id: str, spec: Mapping, version: str, now: datetime) -> dict:
    stamp = fmt_datetime(now)
    info = {
        "id": job_id,
        "operation": spec["operation"],
        "object": spec["object"],
        "createdById": INTEGRATION_USER_ID,
        "createdDate": stamp,
        "systemModstamp": stamp,
        "state": "Open" if kind == "ingest" else "UploadComplete",
        "concurrencyMode": "Parallel",
        "contentType": "CSV",
        "apiVersion": float(version),
        "jobType": "V2Ingest" if kind == "ingest" else "V2Query",
        "lineEnding": spec.get("lineEnding") or "LF",
        "columnDelimiter": spec.get("columnDelimiter") or "COMMA",
        "numberRecordsProcessed": 0,
        "retries": 0,
        "totalProcessingTime": 0,
    }
    if kind == "ingest":
        if spec.get("externalIdFieldName"):
            info["externalIdFieldName"] = spec["externalIdFieldName"]
        info["contentUrl"] = f"services/data/v{version}/jobs/ingest/{job_id}/batches"
        info |= {"numberRecordsFailed": 0, "apiActiveProcessingTime": 0, "apexProcessingTime": 0}
    return info


def _bad_job(message: str, code: str = "INVALIDJOB") -> SalesforceError:
    return SalesforceError(400, code, message)


def check_ingest_spec(schema: Schema, spec: Any) -> dict:
    """A create-job request body -> its normalized spec; 400 when invalid."""
    if not isinstance(spec, dict):
        raise _bad_job("Invalid job request body", "JSON_PARSER_ERROR")
    operation = spec.get("operation")
    if operation not in INGEST_OPERATIONS:
        raise _bad_job(f"Invalid value for operation: {operation}")
    obj = schema.get(str(spec.get("object") or ""))
    if obj is None:
        raise _bad_job(
            f"Entity '{spec.get('object')}' is not supported by the Bulk API.", "INVALIDENTITY"
        )
    if (spec.get("contentType") or "CSV") != "CSV":
        raise _bad_job(f"Invalid value for contentType: {spec.get('contentType')}")
    if (spec.get("lineEnding") or "LF") not in LINE_ENDINGS:
        raise _bad_job(f"Invalid value for lineEnding: {spec.get('lineEnding')}")
    if (spec.get("columnDelimiter") or "COMMA") not in DELIMITERS:
        raise _bad_job(f"Invalid value for columnDelimiter: {spec.get('columnDelimiter')}")
    ext = spec.get("externalIdFieldName")
    if operation == "upsert":
        fd = obj.field(ext) if ext else None
        if fd is None or not (fd.external_id or fd.name == "Id"):
            raise _bad_job(
                f"The externalIdFieldName '{ext}' is not a valid external id field on {obj.name}"
            )
        ext = fd.name
    return {
        **spec,
        "object": obj.name,
        "externalIdFieldName": ext if operation == "upsert" else None,
    }


def process_ingest(tx: Tx, info: dict, upload: str | None) -> dict:
    """Run an UploadComplete ingest job: -> results {"successful", "failed", "unprocessed"}."""
    obj = tx.schema.require(info["object"])
    delimiter = DELIMITERS[info["columnDelimiter"]]
    ending = LINE_ENDINGS[info["lineEnding"]]
    empty = {"successful": "", "failed": "", "unprocessed": ""}
    if not upload:
        return {**empty, "_error": "InvalidBatch : No data was uploaded for this job"}
    rows = list(csv.reader(io.StringIO(upload, newline=""), delimiter=delimiter))
    rows = [r for r in rows if r]  # a trailing line ending is not a record
    header, data = rows[0], rows[1:]
    if len(set(h.lower() for h in header)) != len(header):
        return {**empty, "_error": "InvalidBatch : Duplicate field name in header"}
    for name in header:
        if obj.field(name) is None:
            return {**empty, "_error": f"InvalidBatch : Field name not found : {name}"}
    op, ext = info["operation"], info.get("externalIdFieldName")
    successful = [["sf__Id", "sf__Created", *header]]
    failed = [["sf__Id", "sf__Error", *header]]
    for i, row in enumerate(data, start=2):
        if len(row) != len(header):
            return {**empty, "_error": f"InvalidBatch : Wrong number of columns in row {i}"}
        values = dict(zip(header, row, strict=True))
        record_id = next((v for k, v in values.items() if k.lower() == "id"), None)
        if op in ("delete", "hardDelete"):
            result = tx.save(obj.name, "delete", {}, record_id=record_id, mode="csv")
        elif op == "update":
            result = tx.save(obj.name, "update", values, record_id=record_id, mode="csv")
        else:
            result = tx.save(
                obj.name, op.replace("insert", "create"), values, ext_field=ext, mode="csv"
            )
        if result.success:
            successful.append([result.id or "", "true" if result.created else "false", *row])
        else:
            failed.append([result.id or "", result.errors[0].to_csv(), *row])
    return {
        "successful": csv_text(successful, ending, delimiter),
        "failed": csv_text(failed, ending, delimiter),
        "unprocessed": csv_text([header], ending, delimiter),
        "_processed": len(data),
        "_failed": len(failed) - 1,
    }


def unprocessed_csv(info: dict, upload: str | None) -> str:
    """An aborted job's records: the upload as sent (original columns only)."""
    if not upload:
        return ""
    delimiter = DELIMITERS[info["columnDelimiter"]]
    rows = [r for r in csv.reader(io.StringIO(upload, newline=""), delimiter=delimiter) if r]
    return csv_text(rows, LINE_ENDINGS[info["lineEnding"]], delimiter)


def encode_locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int | None:
    try:
        text = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


# ---------------------------------------------------------------- the Python API


class SalesforceStore:
    """Seeding and inspection of the sandbox Salesforce org without HTTP (seeds, tests, CLI).

    Writes run in mode "system": read-only fields (IsConverted, CreatedDate, ...) may be set, no
    lock faults; any invalid record raises SalesforceError and leaves the store unchanged.
    """

    def __init__(self, state: SandboxState):
        self.state = state

    @property
    def schema(self) -> Schema:
        return schema_for(self.state.settings)

    @contextmanager
    def transaction(self, lock: Callable[[], bool] | None = None) -> Iterator[Tx]:
        with self.state.db() as conn:
            _ensure_schema(conn, str(self.state.db_path))
            yield Tx(conn, self.schema, self.state.settings, lock)

    def create(self, type_name: str, records: list[dict]) -> list[str]:
        """Create records (any field, read-only ones included) -> ids in input order."""
        with self.transaction() as tx:
            return [_ok(tx.save(type_name, "create", r, mode="system")) for r in records]

    def update(self, type_name: str, record_id: str, values: dict) -> None:
        with self.transaction() as tx:
            _ok(tx.save(type_name, "update", values, record_id=record_id, mode="system"))

    def upsert(self, type_name: str, ext_field: str, records: list[dict]) -> list[tuple[str, bool]]:
        """Create or update by an external id field -> [(id, created)] in input order."""
        with self.transaction() as tx:
            out = []
            for r in records:
                result = tx.save(type_name, "upsert", r, ext_field=ext_field, mode="system")
                out.append((_ok(result), result.created))
            return out

    def convert_lead(
        self,
        lead_id: str,
        account_id: str | None = None,
        contact_id: str | None = None,
        opportunity_id: str | None = None,
        converted_on: date | None = None,
        **options: Any,
    ) -> dict:
        """Convert a Lead as Salesforce's convertLead does (Tx.convert_lead) -> the ids it got.

        Seeds pass the Account and Contact (and Opportunity) to convert into; unlike the API call
        no Opportunity is made unless create_opportunity=True. `options` are LeadConvert's
        (converted_status, owner_id, ...). Raises SalesforceError, changing nothing, on an error.
        """
        options.setdefault("create_opportunity", False)
        spec = LeadConvert(lead_id, account_id=account_id, contact_id=contact_id,
                           opportunity_id=opportunity_id, converted_on=converted_on,
                           **options)  # fmt: skip
        with self.transaction() as tx:
            result = tx.convert_lead(spec)
        if result.errors:
            raise result.errors[0].to_error()
        return {
            "leadId": result.lead_id,
            "accountId": result.account_id,
            "contactId": result.contact_id,
            "opportunityId": result.opportunity_id,
        }

    def get(self, record_id: str) -> dict | None:
        """A record's fields (plus `_type`), deleted or not; None if unknown."""
        rid = normalize_id(record_id)
        with self.transaction() as tx:
            rec = tx.get(rid) if rid else None
            return dict(rec) if rec else None

    def query(self, soql: str, include_deleted: bool = False) -> list[dict]:
        """All records a SOQL statement selects, rendered as the REST API would (no paging)."""
        with self.transaction() as tx:
            result = run_query(tx, parse_soql(soql, tx.schema), include_deleted)
            return [render(result, r, API_VERSION) for r in result.records]

    def count(self, type_name: str) -> int:
        with self.transaction() as tx:
            return tx.count(tx.schema.require(type_name).name)

    def expire_sessions(self) -> int:
        """End every session (clients then get 401 INVALID_SESSION_ID) -> how many."""
        with self.transaction() as tx:
            return tx.conn.execute("DELETE FROM salesforce_sessions").rowcount


def _ok(result: SaveResult) -> str:
    if result.errors:
        raise result.errors[0].to_error()
    return result.id
