"""HubSpot CRM storage for the sandbox: schema, property rules, records, associations and search.

The HTTP emulator (sandbox.hubspot) and the seeding/inspection API (HubSpotStore, used without
HTTP by the world generator and the CLI) share this module, so both apply the same rules. All data
lives in the sandbox SQLite file, in tables prefixed `hubspot_`. Behaviour follows
docs/hubspot.md, cited below by section.

Merges (StoreTx.merge, behind both the HTTP route and HubSpotStore.merge) follow HubSpot's current
behaviour for contacts and companies (deals too): a NEW record with a new id, above every id so
far, takes the primary record's values and the secondary's where the primary has none (but the
lifecycle stage furthest down the funnel, a documented exception); the older create date; the
secondary's email or domain in hs_additional_emails / hs_additional_domains; the old ids in
hs_merged_object_ids; the associations of both (the primary's "Primary" company label wins).
The old records are gone from list, search and lookups by value, but their ids still answer with
the merged record (GET by id, batch read/update/upsert by id), as HubSpot's do.

A merged-away (secondary) email: lookups by email (batch read/upsert, GET with idProperty=email)
match the `email` property only, never hs_additional_emails. HubSpot's "Merge records" article
says a new record can be created with the merged email addresses, so the address is free: a
read by it finds nothing (207 OBJECT_NOT_FOUND) and an upsert by it creates a new contact, while
the merged record keeps it among its additional emails. Whether HubSpot's own upsert ever
matches a secondary email is not documented; check against the real API before relying on it.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.state import SandboxState

# Canonical object type names and the ids HubSpot also accepts in paths (docs/hubspot.md §7).
OBJECT_TYPE_IDS = {
    "contacts": "0-1",
    "companies": "0-2",
    "deals": "0-3",
    "meetings": "0-47",
    "tasks": "0-27",
}
_TYPE_ALIASES = {
    **{name: name for name in OBJECT_TYPE_IDS},
    **{type_id: name for name, type_id in OBJECT_TYPE_IDS.items()},
    **{name[:-1]: name for name in ("contacts", "deals", "meetings", "tasks")},
    "company": "companies",
}
_SINGULAR = {
    "contacts": "contact",
    "companies": "company",
    "deals": "deal",
    "meetings": "meeting",
    "tasks": "task",
}
CREATED_PROPERTY = {t: "createdate" for t in OBJECT_TYPE_IDS} | {
    "meetings": "hs_createdate",
    "tasks": "hs_createdate",
}
MODIFIED_PROPERTY = {t: "hs_lastmodifieddate" for t in OBJECT_TYPE_IDS} | {
    "contacts": "lastmodifieddate"
}
# Returned with every record, requested or not (as HubSpot does).
ALWAYS_RETURNED = {
    t: {"hs_object_id", CREATED_PROPERTY[t], MODIFIED_PROPERTY[t]} for t in OBJECT_TYPE_IDS
}
DEFAULT_RETURNED = {
    "contacts": ["email", "firstname", "lastname"],
    "companies": ["domain", "name"],
    "deals": ["amount", "closedate", "dealname", "dealstage", "pipeline"],
    "meetings": ["hs_timestamp"],
    "tasks": ["hs_timestamp", "hs_task_subject", "hs_task_status"],
}
# Properties the free-text `query` of a search looks at.
_QUERY_PROPERTIES = {
    "contacts": ["firstname", "lastname", "email", "company"],
    "companies": ["name", "domain"],
    "deals": ["dealname"],
    "meetings": ["hs_meeting_title"],
    "tasks": ["hs_task_subject"],
}
_REQUIRED_ON_CREATE = {"meetings": ["hs_timestamp"], "tasks": ["hs_timestamp"]}

# Association type ids (SDK AssociationType, docs/hubspot.md §7):
# type id -> (from, to, inverse type id).
ASSOCIATION_TYPES = {
    1: ("contacts", "companies", 2),
    2: ("companies", "contacts", 1),
    279: ("contacts", "companies", 280),
    280: ("companies", "contacts", 279),
    3: ("deals", "contacts", 4),
    4: ("contacts", "deals", 3),
    5: ("deals", "companies", 6),
    6: ("companies", "deals", 5),
    341: ("deals", "companies", 342),
    342: ("companies", "deals", 341),
    200: ("meetings", "contacts", 199),
    199: ("contacts", "meetings", 200),
    188: ("meetings", "companies", 187),
    187: ("companies", "meetings", 188),
    212: ("meetings", "deals", 211),
    211: ("deals", "meetings", 212),
    204: ("tasks", "contacts", 203),
    203: ("contacts", "tasks", 204),
    192: ("tasks", "companies", 191),
    191: ("companies", "tasks", 192),
}
# Primary labels always come with the unlabeled association of the same pair.
PRIMARY_BASE_TYPE = {1: 279, 2: 280, 5: 341, 6: 342}
DEFAULT_ASSOCIATION_TYPE = {
    (src, dst): type_id
    for type_id, (src, dst, _) in ASSOCIATION_TYPES.items()
    if type_id not in PRIMARY_BASE_TYPE
}

# A contact or deal has one "Primary" company; a company may be the primary one of many records.
_SINGLE_PRIMARY = {t for t in PRIMARY_BASE_TYPE if ASSOCIATION_TYPES[t][1] == "companies"}

# Merges: HubSpot merges these (not activities such as meetings and tasks).
MERGEABLE = ("contacts", "companies", "deals")
_MERGED = "hs_merged_object_ids"
# The value a merge keeps from the primary record, and where the secondary's value goes.
_MERGE_KEYS = {
    "contacts": ("email", "hs_additional_emails"),
    "companies": ("domain", "hs_additional_domains"),
}
# The lifecycle stages of the funnel, in order ("other" is outside it).
LIFECYCLE_STAGES = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
)
# An exception HubSpot keeps to "the primary's values": the stage furthest down the funnel
# wins. "other" is no stage of the funnel, so a record holding it follows the general rule.
_FUNNELS = {("contacts", "lifecyclestage"): LIFECYCLE_STAGES}

PROPERTY_TYPES = {
    "string": {"text", "textarea", "file"},
    "number": {"number"},
    "date": {"date"},
    "datetime": {"date"},
    "enumeration": {"select", "radio", "checkbox", "booleancheckbox"},
    "bool": {"booleancheckbox"},
}
FIELD_TYPES = {"calculation_equation"}.union(*PROPERTY_TYPES.values())
MAX_UNIQUE_PROPERTIES = 10
MAX_STRING_LENGTH = 65_536
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_FIRST_ID = 1000  # ids start above small integers so list indexes are never mistaken for ids

SEARCH_MAX_LIMIT, SEARCH_DEFAULT_LIMIT, SEARCH_WINDOW = 200, 10, 10_000
SEARCH_MAX_GROUPS, SEARCH_MAX_FILTERS_PER_GROUP, SEARCH_MAX_FILTERS = 5, 6, 18
ASSOCIATIONS_PAGE = 500  # to-objects per from-object in one v4 batch read


class HubSpotError(Exception):
    """A HubSpot-style error answer (docs/hubspot.md §9); the HTTP layer renders it, Python
    callers may catch it."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str = "VALIDATION_ERROR",
        errors: list[dict] | None = None,
        context: dict[str, list[str]] | None = None,
        sub_category: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.category = status, message, category
        self.errors, self.context, self.sub_category = errors or [], context or {}, sub_category

    def body(self, correlation_id: str) -> dict:
        body = {"status": "error", "message": self.message, "correlationId": correlation_id}
        body |= {"category": self.category, "errors": self.errors, "context": self.context}
        if self.sub_category:
            body["subCategory"] = self.sub_category
        return body | {"links": {}}


@dataclass(frozen=True)
class Issue:
    """One invalid property value: `code` as HubSpot names it (INVALID_INTEGER, ...)."""

    code: str
    name: str
    message: str

    def detail(self) -> dict:
        return {"message": self.message, "code": self.code, "in": self.name, "context": {}}


def validation_message(issues: list[Issue]) -> str:
    """HubSpot's 'Property values were not valid: [json]' message."""
    items = [
        {"isValid": False, "message": i.message, "error": i.code, "name": i.name} for i in issues
    ]
    return f"Property values were not valid: {json.dumps(items, separators=(',', ':'))}"


def validation_error(issues: list[Issue]) -> HubSpotError:
    details = [i.detail() for i in issues]
    context = {"properties": sorted({i.name for i in issues})}
    return HubSpotError(400, validation_message(issues), errors=details, context=context)


def singular(object_type: str) -> str:
    return _SINGULAR[object_type]


def canonical_type(raw: str) -> str:
    """`contacts`, `contact`, `0-1`... -> `contacts`; anything else is a 400."""
    name = _TYPE_ALIASES.get(raw.lower())
    if name is None:
        raise HubSpotError(400, f"Unable to infer object type from: {raw}")
    return name


# ---------------------------------------------------------------- time


def iso_ms(moment: datetime) -> str:
    """HubSpot's datetime wire format: ISO-8601 UTC with milliseconds and Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_instant(text: str) -> datetime | None:
    """ISO-8601 (naive = UTC) or epoch milliseconds -> aware UTC datetime; None if neither."""
    text = text.strip()
    try:
        if re.fullmatch(r"-?\d+", text):
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


#: The sandbox clock's lead over the real time (SandboxState.now), in seconds: the router sets
#: it on each request, so records are stamped on the clock every emulator shares.
clock_offset_s = 0.0


def now_iso() -> str:
    return iso_ms(datetime.now(UTC) + timedelta(seconds=clock_offset_s))


# ---------------------------------------------------------------- property definitions


@dataclass(frozen=True)
class PropertyDef:
    """A property definition; field names match the hubspot_properties columns."""

    name: str
    label: str
    type: str
    field_type: str
    group_name: str
    description: str = ""
    display_order: int = -1
    has_unique_value: bool = False
    options: tuple[dict, ...] = ()
    external_options: bool = False  # options live elsewhere (owners, pipelines): not checked
    read_only: bool = False
    hubspot_defined: bool = False
    hidden: bool = False
    form_field: bool = False
    created_at: str = ""
    updated_at: str = ""

    def to_api(self) -> dict:
        """The ModelProperty shape (docs/hubspot.md §6)."""
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "fieldType": self.field_type,
            "description": self.description,
            "groupName": self.group_name,
            "options": list(self.options),
            "displayOrder": self.display_order,
            "calculated": False,
            "externalOptions": self.external_options,
            "hasUniqueValue": self.has_unique_value,
            "hidden": self.hidden,
            "hubspotDefined": self.hubspot_defined,
            "modificationMetadata": {
                "archivable": not self.hubspot_defined,
                "readOnlyDefinition": self.hubspot_defined,
                "readOnlyValue": self.read_only,
            },
            "formField": self.form_field,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


def _options(*values: str) -> tuple[dict, ...]:
    return tuple(
        {"label": v.replace("_", " ").title(), "value": v, "displayOrder": i, "hidden": False}
        for i, v in enumerate(values)
    )


def _p(name: str, label: str, type_: str, field_type: str, **extra: Any) -> dict:
    return {"name": name, "label": label, "type": type_, "field_type": field_type, **extra}


def _merge_record(label: str, name: str = "hs_merged_object_ids") -> dict:
    """A value a merge writes: read-only, several values ';'-separated (HubSpot's multi-value
    format, so search filters match any one of them)."""
    return _p(name, label, "enumeration", "checkbox", external_options=True, read_only=True)


def _builtins(
    group: str, created: str, modified: str, props: list[dict], merged: tuple[dict, ...] = ()
) -> list[PropertyDef]:
    common = [
        _p(created, "Create Date", "datetime", "date"),
        _p(modified, "Last Modified Date", "datetime", "date", read_only=True),
        _p("hs_object_id", "Record ID", "number", "number", read_only=True),
        _p("hubspot_owner_id", "Owner", "enumeration", "select", external_options=True),
    ]
    return [
        PropertyDef(group_name=group, hubspot_defined=True, display_order=i, **p)
        for i, p in enumerate(props + common + list(merged))
    ]


BUILTIN_PROPERTIES = {
    "contacts": _builtins(
        "contactinformation",
        "createdate",
        "lastmodifieddate",
        [
            _p("email", "Email", "string", "text", has_unique_value=True),
            _p("firstname", "First Name", "string", "text"),
            _p("lastname", "Last Name", "string", "text"),
            _p("company", "Company Name", "string", "text"),
            _p("jobtitle", "Job Title", "string", "text"),
            _p(
                "lifecyclestage",
                "Lifecycle Stage",
                "enumeration",
                "radio",
                options=_options(*LIFECYCLE_STAGES, "other"),
            ),
        ],
        merged=(
            _merge_record("Additional email addresses", "hs_additional_emails"),
            _merge_record("Merged Contact IDs"),
        ),
    ),
    "companies": _builtins(
        "companyinformation",
        "createdate",
        "hs_lastmodifieddate",
        [
            _p("domain", "Company Domain Name", "string", "text"),
            _p("name", "Name", "string", "text"),
            _p("numberofemployees", "Number of Employees", "number", "number"),
            _p("industry", "Industry", "string", "text"),
            _p("country", "Country/Region", "string", "text"),
            _p("annualrevenue", "Annual Revenue", "number", "number"),
        ],
        merged=(
            _merge_record("Additional Domains", "hs_additional_domains"),
            _merge_record("Merged Company IDs"),
        ),
    ),
    "deals": _builtins(
        "dealinformation",
        "createdate",
        "hs_lastmodifieddate",
        [
            _p("dealname", "Deal Name", "string", "text"),
            _p("amount", "Amount", "number", "number"),
            # Stage and pipeline ids come from pipelines (numeric in custom ones):
            # docs/hubspot.md §7.
            _p("dealstage", "Deal Stage", "enumeration", "radio", external_options=True),
            _p("pipeline", "Pipeline", "enumeration", "select", external_options=True),
            _p("closedate", "Close Date", "datetime", "date"),
            _p("hs_is_closed_won", "Is Closed Won", "bool", "booleancheckbox"),
            _p("hs_is_closed", "Is Deal Closed?", "bool", "booleancheckbox"),
        ],
        merged=(_merge_record("Merged Deal IDs"),),
    ),
    "meetings": _builtins(
        "meeting",
        "hs_createdate",
        "hs_lastmodifieddate",
        [
            _p("hs_timestamp", "Activity date", "datetime", "date"),
            _p("hs_meeting_title", "Meeting name", "string", "text"),
            _p(
                "hs_meeting_outcome",
                "Meeting outcome",
                "enumeration",
                "select",
                options=_options("SCHEDULED", "COMPLETED", "RESCHEDULED", "NO_SHOW", "CANCELED"),
            ),
            _p("hs_meeting_start_time", "Start Time", "datetime", "date"),
            _p("hs_meeting_end_time", "End Time", "datetime", "date"),
        ],
    ),
}
BUILTIN_PROPERTIES["tasks"] = _builtins(
    "task",
    "hs_createdate",
    "hs_lastmodifieddate",
    [
        _p("hs_timestamp", "Due date", "datetime", "date"),
        _p("hs_task_subject", "Task Title", "string", "text"),
        _p("hs_task_body", "Notes", "string", "textarea"),
        _p(
            "hs_task_status",
            "Task Status",
            "enumeration",
            "select",
            options=_options("NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"),
        ),
        _p(
            "hs_task_priority",
            "Priority",
            "enumeration",
            "select",
            options=_options("NONE", "LOW", "MEDIUM", "HIGH"),
        ),
        _p("hs_task_type", "Task Type", "enumeration", "select",
           options=_options("CALL", "EMAIL", "TODO")),
        # Set when the status becomes COMPLETED (unless given), cleared when it is reopened.
        _p("hs_task_completion_date", "Completed at", "datetime", "date"),
    ],
)  # fmt: skip
BUILTIN_GROUPS = {  # object type -> (group name, label)
    "contacts": ("contactinformation", "Contact information"),
    "companies": ("companyinformation", "Company information"),
    "deals": ("dealinformation", "Deal information"),
    "meetings": ("meeting", "Meeting information"),
    "tasks": ("task", "Task information"),
}


# ---------------------------------------------------------------- value coercion


class InvalidValue(ValueError):
    """A value that does not fit its property; `code` as HubSpot names it."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _as_text(raw: Any) -> str | None:
    """JSON value -> wire string; None/"" clear the property."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float | str):
        return str(raw)
    raise InvalidValue("INVALID_TYPE", f"{json.dumps(raw)} is not a string value")


def _coerce_number(defn: PropertyDef, text: str) -> str:
    try:
        if Decimal(text.strip()).is_finite():
            return text.strip()
    except InvalidOperation:
        pass
    raise InvalidValue("INVALID_INTEGER", f'"{text}" was not a valid number.')


def _coerce_bool(defn: PropertyDef, text: str) -> str:
    if text.strip().lower() in ("true", "false"):
        return text.strip().lower()
    raise InvalidValue(
        "INVALID_BOOLEAN", f'"{text}" is not a valid boolean; use "true" or "false".'
    )


def _coerce_datetime(defn: PropertyDef, text: str) -> str:
    moment = parse_instant(text)
    if moment is None:
        raise InvalidValue(
            "INVALID_DATE", f'"{text}" is not a valid datetime (ISO-8601 or epoch milliseconds).'
        )
    if defn.type == "datetime":
        return iso_ms(moment)
    if moment.time() != datetime.min.time():
        raise InvalidValue("INVALID_DATE", f"{text} is at {moment.time()} UTC, not midnight!")
    return moment.date().isoformat()


def _coerce_enumeration(defn: PropertyDef, text: str) -> str:
    if defn.external_options:
        return text
    allowed = [o["value"] for o in defn.options]
    chosen = text.split(";") if defn.field_type == "checkbox" else [text]
    for value in chosen:
        if value not in allowed:
            raise InvalidValue(
                "INVALID_OPTION",
                f"{value} was not one of the allowed options: [{', '.join(allowed)}]",
            )
    return text


def _coerce_string(defn: PropertyDef, text: str) -> str:
    if len(text) > MAX_STRING_LENGTH:
        raise InvalidValue("INVALID_LENGTH", f"value is longer than {MAX_STRING_LENGTH} characters")
    if defn.hubspot_defined and defn.name == "email":
        if not _EMAIL_RE.match(text.strip()):
            raise InvalidValue("INVALID_EMAIL", f"Email address {text} is invalid")
        return text.strip().lower()  # HubSpot stores and matches emails in lower case
    return text


_COERCERS = {
    "number": _coerce_number,
    "bool": _coerce_bool,
    "datetime": _coerce_datetime,
    "date": _coerce_datetime,
    "enumeration": _coerce_enumeration,
    "string": _coerce_string,
}


def coerce_value(defn: PropertyDef, raw: Any) -> str | None:
    """Validate one value and return its stored string (None clears); raises InvalidValue."""
    text = _as_text(raw)
    return None if text is None else _COERCERS[defn.type](defn, text)


# ---------------------------------------------------------------- records


@dataclass
class Record:
    object_type: str
    id: int
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False

    def to_api(self, properties: dict[str, str | None]) -> dict:
        """The SimplePublicObject shape with the given (already selected) properties."""
        return {
            "id": str(self.id),
            "properties": properties,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": self.archived,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS hubspot_objects (
    id INTEGER PRIMARY KEY, object_type TEXT NOT NULL, properties TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS hubspot_objects_by_type ON hubspot_objects (object_type, archived, id);
CREATE INDEX IF NOT EXISTS hubspot_objects_by_modified
    ON hubspot_objects (object_type, json_extract(properties, '$.lastmodifieddate'));
CREATE INDEX IF NOT EXISTS hubspot_objects_by_hs_modified
    ON hubspot_objects (object_type, json_extract(properties, '$.hs_lastmodifieddate'));
CREATE TABLE IF NOT EXISTS hubspot_unique_values (
    object_type TEXT NOT NULL, property TEXT NOT NULL, id INTEGER NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (object_type, property, id), UNIQUE (object_type, property, value));
CREATE TABLE IF NOT EXISTS hubspot_property_groups (
    object_type TEXT NOT NULL, name TEXT NOT NULL, label TEXT NOT NULL,
    display_order INTEGER NOT NULL DEFAULT -1, archived INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (object_type, name));
CREATE TABLE IF NOT EXISTS hubspot_properties (
    object_type TEXT NOT NULL, name TEXT NOT NULL, label TEXT NOT NULL, type TEXT NOT NULL,
    field_type TEXT NOT NULL, group_name TEXT NOT NULL, description TEXT NOT NULL,
    display_order INTEGER NOT NULL, has_unique_value INTEGER NOT NULL, options TEXT NOT NULL,
    external_options INTEGER NOT NULL, read_only INTEGER NOT NULL,
    hubspot_defined INTEGER NOT NULL, hidden INTEGER NOT NULL, form_field INTEGER NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (object_type, name));
CREATE TABLE IF NOT EXISTS hubspot_associations (
    from_type TEXT NOT NULL, from_id INTEGER NOT NULL, to_type TEXT NOT NULL,
    to_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    PRIMARY KEY (from_type, to_type, from_id, to_id, type_id));
CREATE TABLE IF NOT EXISTS hubspot_merged_ids (
    object_type TEXT NOT NULL, old_id INTEGER NOT NULL, new_id INTEGER NOT NULL,
    PRIMARY KEY (object_type, old_id));
"""
_PROPERTY_COLUMNS = [f.name for f in dataclasses.fields(PropertyDef)]
_PROPERTY_FLAGS = [f.name for f in dataclasses.fields(PropertyDef) if f.type == "bool"]


def _ensure_schema(conn) -> None:
    """Create the tables and built-in definitions once per database file. A file made before
    merges existed gets what is missing (the table created last is the marker)."""
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='hubspot_merged_ids'"
    ).fetchone():
        return
    for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would COMMIT
        conn.execute(statement)
    created = now_iso()
    for object_type, defs in BUILTIN_PROPERTIES.items():
        group, label = BUILTIN_GROUPS[object_type]
        if not conn.execute(
            "SELECT 1 FROM hubspot_property_groups WHERE object_type = ? AND name = ?",
            (object_type, group),
        ).fetchone():
            _insert_group(conn, object_type, group, label, -1)
        rows = conn.execute(
            "SELECT name FROM hubspot_properties WHERE object_type = ?", (object_type,)
        )
        known = {row[0] for row in rows}
        for defn in defs:
            if defn.name not in known:
                _insert_property(conn, object_type, defn, created)


def _insert_group(conn, object_type: str, name: str, label: str, order: int) -> None:
    conn.execute(
        "INSERT INTO hubspot_property_groups (object_type, name, label, display_order)"
        " VALUES (?, ?, ?, ?)",
        (object_type, name, label, order),
    )


def _insert_property(conn, object_type: str, defn: PropertyDef, when: str) -> PropertyDef:
    defn = dataclasses.replace(defn, created_at=when, updated_at=when)
    row = dataclasses.asdict(defn) | {"options": json.dumps(list(defn.options))}
    columns = ", ".join(["object_type", *_PROPERTY_COLUMNS])
    marks = ", ".join("?" * (len(_PROPERTY_COLUMNS) + 1))
    values = [object_type, *(row[c] for c in _PROPERTY_COLUMNS)]
    conn.execute(f"INSERT INTO hubspot_properties ({columns}) VALUES ({marks})", values)
    return defn


def _row_to_property(row) -> PropertyDef:
    values = {c: row[c] for c in _PROPERTY_COLUMNS}
    values["options"] = tuple(json.loads(values["options"]))
    for flag in _PROPERTY_FLAGS:
        values[flag] = bool(values[flag])  # SQLite stores booleans as 0/1
    return PropertyDef(**values)


def _row_to_record(object_type: str, row) -> Record:
    return Record(
        object_type,
        row["id"],
        json.loads(row["properties"]),
        row["created_at"],
        row["updated_at"],
        bool(row["archived"]),
    )


def _chunks(items: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _bool_text(flag: bool) -> str:
    return "true" if flag else "false"


# ---------------------------------------------------------------- the transaction API


@dataclass
class StoreTx:
    """Everything the emulator does, inside one SQLite transaction (HubSpotStore.transaction)."""

    conn: Any
    now: str = field(default_factory=now_iso)
    _defs: dict[str, dict[str, PropertyDef]] = field(default_factory=dict)
    _next_id: int | None = None

    # ---- properties and groups

    def defs(self, object_type: str) -> dict[str, PropertyDef]:
        if object_type not in self._defs:
            rows = self.conn.execute(
                "SELECT * FROM hubspot_properties WHERE object_type = ? ORDER BY display_order",
                (object_type,),
            )
            self._defs[object_type] = {r["name"]: _row_to_property(r) for r in rows}
        return self._defs[object_type]

    def groups(self, object_type: str) -> list[dict]:
        rows = self.conn.execute(
            "SELECT * FROM hubspot_property_groups WHERE object_type = ? ORDER BY name",
            (object_type,),
        )
        return [_group_api(r) for r in rows]

    def group(self, object_type: str, name: str) -> dict | None:
        row = self.conn.execute(
            "SELECT * FROM hubspot_property_groups WHERE object_type = ? AND name = ?",
            (object_type, name),
        ).fetchone()
        return _group_api(row) if row else None

    def create_group(self, object_type: str, spec: Mapping) -> dict:
        """PropertyGroupCreate (camelCase) -> PropertyGroup; 400 invalid, 409 existing."""
        _require(spec, ["name", "label"])
        name = str(spec["name"])
        _check_name(name)
        if self.group(object_type, name):
            raise HubSpotError(
                409, f"A property group named '{name}' already exists.", "OBJECT_ALREADY_EXISTS"
            )
        order = _int_field(spec, "displayOrder", -1)
        _insert_group(self.conn, object_type, name, str(spec["label"]), order)
        return self.group(object_type, name)

    def create_property(self, object_type: str, spec: Mapping) -> PropertyDef:
        """PropertyCreate (camelCase) -> PropertyDef; 400 invalid, 409 existing
        (docs/hubspot.md §6)."""
        _require(spec, ["name", "label", "type", "fieldType", "groupName"])
        defn = _property_from_spec(spec)
        if defn.name in self.defs(object_type):
            raise HubSpotError(
                409, f"A property named '{defn.name}' already exists.", "OBJECT_ALREADY_EXISTS"
            )
        if not self.group(object_type, defn.group_name):
            raise HubSpotError(400, f"Property group '{defn.group_name}' does not exist.")
        defs = self.defs(object_type).values()
        uniques = [d for d in defs if d.has_unique_value and not d.hubspot_defined]
        if defn.has_unique_value and len(uniques) >= MAX_UNIQUE_PROPERTIES:
            raise HubSpotError(400, f"At most {MAX_UNIQUE_PROPERTIES} unique properties allowed.")
        defn = _insert_property(self.conn, object_type, defn, self.now)
        self._defs.pop(object_type, None)
        return defn

    # ---- validation

    def schema_issues(self, object_type: str, names: Iterable[str]) -> list[Issue]:
        """Writes that no value can fix: unknown or read-only properties (a 400 for the batch)."""
        defs, issues = self.defs(object_type), []
        for name in dict.fromkeys(names):
            if name not in defs:
                message = f'Property "{name}" does not exist'
                issues.append(Issue("PROPERTY_DOESNT_EXIST", name, message))
            elif defs[name].read_only:
                message = f"{name} is a read only property; its value cannot be set."
                issues.append(Issue("READ_ONLY_VALUE", name, message))
        return issues

    def coerce(self, object_type: str, values: Mapping) -> tuple[dict[str, str | None], list]:
        """Validate property values (names already checked): (clean values, issues)."""
        defs, clean, issues = self.defs(object_type), {}, []
        for name, raw in values.items():
            try:
                clean[name] = coerce_value(defs[name], raw)
            except InvalidValue as bad:
                issues.append(Issue(bad.code, name, str(bad)))
        return clean, issues

    def check_values(self, object_type: str, values: Mapping) -> dict[str, str | None]:
        """All-or-nothing validation for the Python API: HubSpotError(400) on any problem."""
        issues = self.schema_issues(object_type, values)
        if not issues:
            clean, issues = self.coerce(object_type, values)
        if issues:
            raise validation_error(issues)
        return clean

    def missing_required(self, object_type: str, clean: Mapping) -> list[Issue]:
        return [
            Issue("REQUIRED_PROPERTY", name, f"{name} is required")
            for name in _REQUIRED_ON_CREATE.get(object_type, [])
            if clean.get(name) is None
        ]

    # ---- records

    def fetch(self, object_type: str, ids: Iterable[int]) -> dict[int, Record]:
        found: dict[int, Record] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = self.conn.execute(
                f"SELECT * FROM hubspot_objects WHERE object_type = ? AND archived = 0"
                f" AND id IN ({','.join('?' * len(chunk))})",
                (object_type, *chunk),
            )
            found.update((r["id"], _row_to_record(object_type, r)) for r in rows)
        return found

    def find(self, object_type: str, prop: str, values: Iterable[str]) -> dict[str, int]:
        """Record id per stored value of `prop` (values already coerced); first record wins."""
        values = list(dict.fromkeys(values))
        if prop == "hs_object_id":
            wanted = {int(v): v for v in values if v.isdigit()}
            live = self.fetch(object_type, wanted)
            # An id merged away answers with the record it was merged into, as at HubSpot.
            moved = self.merged_into(object_type, [i for i in wanted if i not in live])
            return {wanted[i]: i for i in live} | {wanted[old]: new for old, new in moved.items()}
        defn, found = self.defs(object_type)[prop], {}
        for chunk in _chunks(values):
            marks = ",".join("?" * len(chunk))
            if defn.has_unique_value:
                sql = (
                    "SELECT value, id FROM hubspot_unique_values WHERE object_type = ?"
                    f" AND property = ? AND value IN ({marks})"
                )
                rows = self.conn.execute(sql, (object_type, prop, *chunk))
            else:  # a scan; only the Python API keys on non-unique properties
                sql = (
                    "SELECT json_extract(properties, '$.' || ?) AS value, id FROM hubspot_objects"
                    f" WHERE object_type = ? AND archived = 0 AND value IN ({marks}) ORDER BY id"
                )
                rows = self.conn.execute(sql, (prop, object_type, *chunk))
            for row in rows:
                found.setdefault(row["value"], row["id"])
        return found

    def insert(self, object_type: str, clean: Mapping[str, str | None]) -> Record:
        """Create a record from coerced values; 409 CONFLICT on a taken unique value."""
        record_id = self._allocate_id()
        props = {k: v for k, v in clean.items() if v is not None}
        created = props.get(CREATED_PROPERTY[object_type]) or self.now
        props |= {"hs_object_id": str(record_id), CREATED_PROPERTY[object_type]: created}
        props[MODIFIED_PROPERTY[object_type]] = self.now
        record = Record(object_type, record_id, props, created, self.now)
        _derive(record, clean, inserting=True)
        self._index_unique(record, clean)
        self.conn.execute(
            "INSERT INTO hubspot_objects (object_type, id, properties, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (object_type, record_id, json.dumps(props), created, self.now),
        )
        return record

    def update(self, record: Record, clean: Mapping[str, str | None]) -> Record:
        """Apply coerced values to a record (None clears); every write bumps the modified date."""
        created_prop = CREATED_PROPERTY[record.object_type]
        props = dict(record.properties)
        for name, value in clean.items():
            if value is None:
                props.pop(name, None)
            else:
                props[name] = value
        props.setdefault(created_prop, record.created_at)
        props[MODIFIED_PROPERTY[record.object_type]] = self.now
        record = dataclasses.replace(
            record, properties=props, created_at=props[created_prop], updated_at=self.now
        )
        _derive(record, clean, inserting=False)
        self._index_unique(record, clean)
        self.conn.execute(
            "UPDATE hubspot_objects SET properties = ?, created_at = ?, updated_at = ?"
            " WHERE object_type = ? AND id = ?",
            (json.dumps(props), record.created_at, self.now, record.object_type, record.id),
        )
        return record

    def records(self, object_type: str, after_id: int = 0, limit: int | None = None):
        """Live records in id order, from after `after_id`."""
        sql = "SELECT * FROM hubspot_objects WHERE object_type = ? AND archived = 0 AND id > ?"
        sql += " ORDER BY id" + (" LIMIT ?" if limit is not None else "")
        args = (object_type, after_id) + ((limit,) if limit is not None else ())
        return [_row_to_record(object_type, r) for r in self.conn.execute(sql, args)]

    def count(self, object_type: str) -> int:
        sql = "SELECT COUNT(*) FROM hubspot_objects WHERE object_type = ? AND archived = 0"
        return self.conn.execute(sql, (object_type,)).fetchone()[0]

    def view(self, record: Record, requested: Iterable[str] | None) -> dict[str, str | None]:
        """Properties to return: requested (or the defaults) plus the always-returned ones.

        Requested-but-unset properties come back as null; unknown names are silently absent.
        """
        object_type = record.object_type
        names = DEFAULT_RETURNED[object_type] if requested is None else list(requested)
        defs = self.defs(object_type)
        wanted = [n for n in names if n in defs] + sorted(ALWAYS_RETURNED[object_type])
        return {n: record.properties.get(n) for n in dict.fromkeys(wanted)}

    def _allocate_id(self) -> int:
        if self._next_id is None:
            row = self.conn.execute("SELECT MAX(id) FROM hubspot_objects").fetchone()
            self._next_id = max(row[0] or 0, _FIRST_ID) + 1
        self._next_id += 1
        return self._next_id - 1

    def _index_unique(self, record: Record, written: Mapping[str, str | None]) -> None:
        defs = self.defs(record.object_type)
        for name in written:
            if not defs[name].has_unique_value:
                continue
            key = (record.object_type, name)
            self.conn.execute(
                "DELETE FROM hubspot_unique_values WHERE object_type = ? AND property = ?"
                " AND id = ?",
                (*key, record.id),
            )
            value = record.properties.get(name)
            if value is None:
                continue
            holder = self.find(record.object_type, name, [value]).get(value)
            if holder is not None:
                noun = _SINGULAR[record.object_type].capitalize()
                raise HubSpotError(409, f"{noun} already exists. Existing ID: {holder}", "CONFLICT")
            self.conn.execute(
                "INSERT INTO hubspot_unique_values (object_type, property, id, value)"
                " VALUES (?, ?, ?, ?)",
                (*key, record.id, value),
            )

    # ---- associations

    def associate(
        self,
        from_type: str,
        to_type: str,
        pairs: Iterable[tuple[int, int]],
        type_id: int | None = None,
    ) -> int:
        """Link records (both directions; primaries also get the unlabeled type); 400 if invalid."""
        type_ids = _association_types(from_type, to_type, type_id)
        pairs = list(pairs)
        for ids, kind in (({f for f, _ in pairs}, from_type), ({t for _, t in pairs}, to_type)):
            missing = sorted(set(ids) - set(self.fetch(kind, ids)))
            if missing:
                raise HubSpotError(
                    400, f"{kind} records do not exist: {missing[:10]}", "OBJECT_NOT_FOUND"
                )
        rows = []
        for tid in type_ids:
            inverse = ASSOCIATION_TYPES[tid][2]
            rows += [(from_type, f, to_type, t, tid) for f, t in pairs]
            rows += [(to_type, t, from_type, f, inverse) for f, t in pairs]
        self.conn.executemany(
            "INSERT OR IGNORE INTO hubspot_associations"
            " (from_type, from_id, to_type, to_id, type_id) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        return len(pairs)

    def associations(self, from_type: str, to_type: str, from_ids: Iterable[int]):
        """{from_id: {to_id: [type ids]}} for the given sources, ordered by to_id."""
        result: dict[int, dict[int, list[int]]] = {}
        for chunk in _chunks(list(dict.fromkeys(from_ids))):
            rows = self.conn.execute(
                "SELECT from_id, to_id, type_id FROM hubspot_associations"
                " WHERE from_type = ? AND to_type = ?"
                f" AND from_id IN ({','.join('?' * len(chunk))}) ORDER BY from_id, to_id, type_id",
                (from_type, to_type, *chunk),
            )
            for r in rows:
                result.setdefault(r["from_id"], {}).setdefault(r["to_id"], []).append(r["type_id"])
        return result

    # ---- merges

    def merged_into(self, object_type: str, ids: Iterable[int]) -> dict[int, int]:
        """{old id: the record it now points to} for the given ids that were merged away."""
        found: dict[int, int] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = self.conn.execute(
                "SELECT old_id, new_id FROM hubspot_merged_ids WHERE object_type = ?"
                f" AND old_id IN ({','.join('?' * len(chunk))})",
                (object_type, *chunk),
            )
            found.update((r["old_id"], r["new_id"]) for r in rows)
        return found

    def merge(self, object_type: str, primary_id: Any, secondary_id: Any) -> Record:
        """Merge two records into a NEW record with a new id, as HubSpot now does; returns it.

        Values are the primary's, the secondary's where the primary has none (exceptions in
        _merged_values). Both old records stop existing and their ids point to the new one;
        the associations of both move to it. 400 for a record merged with itself or an id
        already merged away, 404 for an id that never existed.
        """
        if object_type not in MERGEABLE:
            raise HubSpotError(400, f"{object_type} records can't be merged.")
        ids = [_merge_id(primary_id, "primaryObjectId"), _merge_id(secondary_id, "objectIdToMerge")]
        noun = singular(object_type)
        if ids[0] == ids[1]:
            raise HubSpotError(400, f"A {noun} can't be merged with itself ({ids[0]}).")
        gone = self.merged_into(object_type, ids)
        old = next((i for i in ids if i in gone), None)
        if old is not None:
            raise HubSpotError(
                400,
                f"{noun.capitalize()} {old} was already merged into {gone[old]}: merge that "
                "record instead.",
                context={"ids": [str(old)]},
            )
        found = self.fetch(object_type, ids)
        missing = [str(i) for i in ids if i not in found]
        if missing:
            message = f"No {noun} with id {', '.join(missing)}; it may be deleted or not exist."
            raise HubSpotError(404, message, "OBJECT_NOT_FOUND", context={"ids": missing})
        values = _merged_values(found[ids[0]], found[ids[1]])
        # Unique values are freed first (the new record takes some of them), but the old rows
        # go only after the insert: ids come from MAX(id), so the new id lands above both old
        # ones and no id is ever handed out twice.
        where = "object_type = ? AND id IN (?, ?)"
        self.conn.execute(f"DELETE FROM hubspot_unique_values WHERE {where}", (object_type, *ids))
        merged = self.insert(object_type, values)
        self.conn.execute(f"DELETE FROM hubspot_objects WHERE {where}", (object_type, *ids))
        self._move_associations(object_type, ids, merged.id)
        # Ids merged into the old records earlier point to the new one too (one hop, always).
        self.conn.execute(
            "UPDATE hubspot_merged_ids SET new_id = ? WHERE object_type = ? AND new_id IN (?, ?)",
            (merged.id, object_type, *ids),
        )
        self.conn.executemany(
            "INSERT INTO hubspot_merged_ids (object_type, old_id, new_id) VALUES (?, ?, ?)",
            [(object_type, i, merged.id) for i in ids],
        )
        return merged

    def _move_associations(self, object_type: str, old_ids: list[int], new_id: int) -> None:
        """Both records' associations (both directions) now link the new record. Where both had
        a "Primary" company, the primary record's keeps the label; the secondary's association
        stays, unlabeled, as HubSpot drops only the excess "Primary" labels."""
        primary_id, marks = old_ids[0], ",".join("?" * len(old_ids))
        where = f"(from_type = ? AND from_id IN ({marks})) OR (to_type = ? AND to_id IN ({marks}))"
        params = (object_type, *old_ids, object_type, *old_ids)
        rows = list(self.conn.execute(f"SELECT * FROM hubspot_associations WHERE {where}", params))
        held = {
            r["type_id"]
            for r in rows
            if (r["from_type"], r["from_id"]) == (object_type, primary_id)
            and r["type_id"] in _SINGLE_PRIMARY
        }
        moved = []
        for r in rows:
            from_id, to_id, type_id = r["from_id"], r["to_id"], r["type_id"]
            if r["from_type"] == object_type and from_id in old_ids:
                if from_id != primary_id and type_id in held:
                    continue
                from_id = new_id
            if r["to_type"] == object_type and to_id in old_ids:
                if to_id != primary_id and ASSOCIATION_TYPES[type_id][2] in held:
                    continue
                to_id = new_id
            moved.append((r["from_type"], from_id, r["to_type"], to_id, type_id))
        self.conn.execute(f"DELETE FROM hubspot_associations WHERE {where}", params)
        self.conn.executemany(
            "INSERT OR IGNORE INTO hubspot_associations"
            " (from_type, from_id, to_type, to_id, type_id) VALUES (?, ?, ?, ?, ?)",
            moved,
        )

    # ---- search

    def search(self, object_type: str, body: Mapping) -> tuple[int, list[Record], int | None]:
        """Run a CRM search request (docs/hubspot.md §5): (total, this page, next offset or
        None)."""
        query = SearchQuery.parse(body, self.defs(object_type), object_type)
        rows = self._slim_records(object_type, query.property_names(), query.prefilter())
        matches = query.order([(rid, props) for rid, props in rows if query.matches(props)])
        window = min(len(matches), SEARCH_WINDOW)
        end = min(query.offset + query.limit, window)
        next_offset = end if end < window and query.limit else None
        page_ids = [rid for rid, _ in matches[query.offset : end]]
        records = self.fetch(object_type, page_ids)
        return len(matches), [records[rid] for rid in page_ids], next_offset

    def _slim_records(
        self, object_type: str, names: list[str], prefilter: tuple[str, list] = ("", [])
    ) -> list[tuple[int, dict]]:
        """(id, {name: value}) for live records, only the named properties: decoding whole
        records is what makes a search over tens of thousands of them slow. `prefilter` (SQL
        and its parameters) narrows the rows first; the query's own filters still decide."""
        columns = "".join(f", json_extract(properties, '$.{n}')" for n in names)
        rows = self.conn.execute(
            f"SELECT id{columns} FROM hubspot_objects WHERE object_type = ? AND archived = 0"
            + prefilter[0],
            (object_type, *prefilter[1]),
        )
        return [
            (row[0], {n: v for n, v in zip(names, row[1:], strict=True) if v is not None})
            for row in rows
        ]


def _group_api(row) -> dict:
    return {
        "name": row["name"],
        "label": row["label"],
        "displayOrder": row["display_order"],
        "archived": bool(row["archived"]),
    }


def _require(spec: Mapping, names: list[str]) -> None:
    missing = [n for n in names if spec.get(n) in (None, "")]
    if missing:
        details = [
            {"message": f"{n} is required", "code": "REQUIRED_FIELD", "in": n, "context": {}}
            for n in missing
        ]
        raise HubSpotError(400, f"Missing required fields: {', '.join(missing)}", errors=details)


def _int_field(spec: Mapping, name: str, default: int) -> int:
    value = spec.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HubSpotError(400, f"{name} must be an integer, got {value!r}.") from None


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or len(name) > 100:
        raise HubSpotError(
            400,
            f"Invalid name '{name}': use lowercase letters, digits and underscores, "
            "starting with a letter.",
        )


def _property_from_spec(spec: Mapping) -> PropertyDef:
    name, type_, field_type = str(spec["name"]), str(spec["type"]), str(spec["fieldType"])
    _check_name(name)
    if type_ not in PROPERTY_TYPES:
        raise HubSpotError(400, f"Invalid type '{type_}'; one of {sorted(PROPERTY_TYPES)}.")
    if field_type not in FIELD_TYPES:
        raise HubSpotError(400, f"Invalid fieldType '{field_type}'; one of {sorted(FIELD_TYPES)}.")
    if field_type == "calculation_equation":
        raise HubSpotError(400, "Calculated properties are not supported by the sandbox.")
    if field_type not in PROPERTY_TYPES[type_]:
        raise HubSpotError(
            400,
            f"fieldType '{field_type}' is not valid for type '{type_}'; "
            f"valid: {sorted(PROPERTY_TYPES[type_])}.",
        )
    return PropertyDef(
        name=name,
        label=str(spec["label"]),
        type=type_,
        field_type=field_type,
        group_name=str(spec["groupName"]),
        description=str(spec.get("description") or ""),
        display_order=_int_field(spec, "displayOrder", -1),
        has_unique_value=bool(spec.get("hasUniqueValue")),
        options=_spec_options(type_, spec.get("options")),
        external_options=bool(spec.get("externalOptions")),
        hidden=bool(spec.get("hidden")),
        form_field=bool(spec.get("formField")),
    )


def _spec_options(type_: str, raw: Any) -> tuple[dict, ...]:
    if type_ == "bool" and not raw:  # the guide always sends Yes/No; we default to them
        raw = [{"label": "Yes", "value": "true"}, {"label": "No", "value": "false"}]
    if type_ not in ("enumeration", "bool"):
        return ()
    if not raw or not isinstance(raw, list):
        raise HubSpotError(400, "Enumeration properties need a non-empty 'options' list.")
    options = []
    for i, opt in enumerate(raw):
        if not isinstance(opt, dict) or opt.get("label") in (None, "") or opt.get("value") is None:
            raise HubSpotError(400, f"Option {i} needs a label and a value.")
        options.append(
            {
                "label": str(opt["label"]),
                "value": str(opt["value"]),
                "displayOrder": _int_field(opt, "displayOrder", i),
                "hidden": bool(opt.get("hidden", False)),
            }
        )
    if len({o["value"] for o in options}) != len(options):
        raise HubSpotError(400, "Option values must be unique.")
    return tuple(options)


def _derive(record: Record, written: Mapping, inserting: bool) -> None:
    """Deal booleans follow the default pipeline's stage ids unless given; a task's completion
    date follows its status (docs/hubspot.md §7)."""
    if record.object_type == "tasks" and "hs_task_status" in written:
        done = record.properties.get("hs_task_status") == "COMPLETED"
        if not done:
            record.properties.pop("hs_task_completion_date", None)
        elif written.get("hs_task_completion_date") is None:
            record.properties.setdefault("hs_task_completion_date", record.updated_at)
        return
    if record.object_type != "deals" or not (inserting or "dealstage" in written):
        return
    stage = record.properties.get("dealstage")
    if "hs_is_closed_won" not in written:
        record.properties["hs_is_closed_won"] = _bool_text(stage == "closedwon")
    if "hs_is_closed" not in written:
        record.properties["hs_is_closed"] = _bool_text(stage in ("closedwon", "closedlost"))


def _association_types(from_type: str, to_type: str, type_id: int | None) -> list[int]:
    """The type ids to store for one link: the default, or the given one (+ base for primaries)."""
    if type_id is None:
        type_id = DEFAULT_ASSOCIATION_TYPE.get((from_type, to_type))
        if type_id is None:
            raise HubSpotError(400, f"No default association from {from_type} to {to_type}.")
    if ASSOCIATION_TYPES.get(type_id, (None, None))[:2] != (from_type, to_type):
        raise HubSpotError(
            400, f"Association type {type_id} is not valid from {from_type} to {to_type}."
        )
    base = PRIMARY_BASE_TYPE.get(type_id)
    return [type_id] if base is None else [type_id, base]


def _merge_id(raw: Any, name: str) -> int:
    text = "" if raw is None or isinstance(raw, bool) else str(raw).strip()
    if not (text.isascii() and text.isdigit()):
        raise HubSpotError(400, f"Invalid input JSON: {name} must be a record id, got {raw!r}.")
    return int(text)


def _split(multi: str | None) -> list[str]:
    return [part for part in (multi or "").split(";") if part]


def _merged_values(primary: Record, secondary: Record) -> dict[str, str]:
    """The new record's values: the primary's where it has one, else the secondary's; the older
    create date; the secondary's email/domain added to the additional ones; the old ids."""
    object_type = primary.object_type
    values = {**secondary.properties, **primary.properties}
    for name in ("hs_object_id", MODIFIED_PROPERTY[object_type]):
        values.pop(name, None)  # the new record gets its own id, and is modified now
    # Stored datetimes are normalized ISO strings, so text order is time order.
    values[CREATED_PROPERTY[object_type]] = min(primary.created_at, secondary.created_at)
    for (kind, name), funnel in _FUNNELS.items():
        stages = [r.properties.get(name) for r in (primary, secondary)]
        if kind == object_type and all(stage in funnel for stage in stages):
            values[name] = max(stages, key=funnel.index)
    if object_type in _MERGE_KEYS:
        key, extra = _MERGE_KEYS[object_type]
        others = [*_split(primary.properties.get(extra))]
        others += [v for v in (primary.properties.get(key), secondary.properties.get(key)) if v]
        others += _split(secondary.properties.get(extra))
        kept = [v for v in dict.fromkeys(others) if v != values.get(key)]
        values.pop(extra, None)
        values |= {extra: ";".join(kept)} if kept else {}
    merged_ids = {str(r.id) for r in (primary, secondary)}
    merged_ids.update(v for r in (primary, secondary) for v in _split(r.properties.get(_MERGED)))
    values[_MERGED] = ";".join(sorted(merged_ids, key=int))
    return values


def association_label(type_id: int) -> str | None:
    return "Primary" if type_id in PRIMARY_BASE_TYPE else None


def encode_after(offset: int) -> str:
    """Opaque paging token, so clients don't do arithmetic on it."""
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_after(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if text.startswith("o:") and text[2:].isdigit():
            return int(text[2:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise HubSpotError(400, f"Invalid paging token: {token}")


# ---------------------------------------------------------------- search


def _keys(defn: PropertyDef, text: str, stored: bool = False) -> list:
    """Comparable keys for a stored or filter value (checkboxes hold several, split on ';').

    Datetimes compare as normalized ISO strings, whose order is chronological: stored values are
    already normalized on write, so a search over many records parses no dates.
    """
    parts = text.split(";") if defn.field_type == "checkbox" else [text]
    if defn.type == "number":
        return [Decimal(p.strip()) for p in parts]
    if defn.type in ("datetime", "date"):
        if stored:
            return [p + "T00:00:00.000Z" if defn.type == "date" else p for p in parts]
        moments = [parse_instant(p) for p in parts]
        if None in moments:
            raise ValueError(text)
        return [iso_ms(m) for m in moments]
    return [p.casefold() for p in parts]  # HubSpot compares strings case-insensitively


def _stored_keys(defn: PropertyDef, props: Mapping[str, str]) -> list:
    text = props.get(defn.name)
    if text is None:
        return []
    try:
        return _keys(defn, text, stored=True)
    except (ValueError, InvalidOperation):
        return []


_COMPARE = {
    "EQ": lambda k, v: k == v[0],
    "LT": lambda k, v: k < v[0],
    "LTE": lambda k, v: k <= v[0],
    "GT": lambda k, v: k > v[0],
    "GTE": lambda k, v: k >= v[0],
    "BETWEEN": lambda k, v: v[0] <= k <= v[1],
    "IN": lambda k, v: k in v,
}
# Negations match records without a value too (unclear in HubSpot's docs; mirrors "not").
_NEGATED = {"NEQ": "EQ", "NOT_IN": "IN", "NOT_CONTAINS_TOKEN": "CONTAINS_TOKEN"}
OPERATORS = set(_COMPARE) | set(_NEGATED) | {"HAS_PROPERTY", "NOT_HAS_PROPERTY", "CONTAINS_TOKEN"}


@dataclass(frozen=True)
class SearchFilter:
    defn: PropertyDef
    operator: str
    values: tuple = ()

    @classmethod
    def parse(cls, raw: Any, defs: Mapping[str, PropertyDef]) -> SearchFilter:
        if not isinstance(raw, dict):
            raise HubSpotError(400, "Each filter must be an object.")
        name, operator = raw.get("propertyName"), str(raw.get("operator") or "EQ")
        if name not in defs:
            raise HubSpotError(400, f"Property {name!r} does not exist and cannot be filtered on.")
        if operator not in OPERATORS:
            raise HubSpotError(400, f"Unknown filter operator {operator!r}.")
        base = _NEGATED.get(operator, operator)
        if base in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
            return cls(defs[name], operator)
        if base == "CONTAINS_TOKEN":
            return cls(defs[name], operator, (str(raw.get("value") or "").casefold(),))
        texts = _filter_texts(raw, base)
        try:
            keys = tuple(k for text in texts for k in _keys(defs[name], str(text)))
        except (ValueError, InvalidOperation):
            raise HubSpotError(
                400, f"Invalid value {texts} for {defs[name].type} property {name}."
            ) from None
        return cls(defs[name], operator, keys)

    def matches(self, props: Mapping[str, str]) -> bool:
        if self.operator in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
            return (props.get(self.defn.name) is not None) == (self.operator == "HAS_PROPERTY")
        base = _NEGATED.get(self.operator, self.operator)
        if base == "CONTAINS_TOKEN":
            hit = _contains_token(props.get(self.defn.name), self.values[0])
        else:
            keys = _stored_keys(self.defn, props)
            hit = any(_COMPARE[base](k, self.values) for k in keys)
        return hit != (self.operator in _NEGATED)


def _filter_texts(raw: Mapping, operator: str) -> list:
    if operator == "IN":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise HubSpotError(400, f"{raw.get('operator')} needs a non-empty 'values' list.")
        return values
    wanted = ["value", "highValue"] if operator == "BETWEEN" else ["value"]
    if any(raw.get(k) is None for k in wanted):
        raise HubSpotError(400, f"{raw.get('operator')} needs {' and '.join(wanted)}.")
    return [raw[k] for k in wanted]


def _contains_token(text: str | None, pattern: str) -> bool:
    """Whole value or any word matches the pattern (`*` wildcards, e.g. `*@acme.io`)."""
    if text is None:
        return False
    text = text.casefold()
    return any(fnmatch.fnmatchcase(t, pattern) for t in [text, *re.split(r"[\s,;]+", text)])


@dataclass(frozen=True)
class SearchQuery:
    groups: list[list[SearchFilter]]
    sort: tuple[PropertyDef, bool] | None  # (property, descending)
    text: list[str]
    text_properties: list[str]
    limit: int
    offset: int

    @classmethod
    def parse(cls, body: Mapping, defs: Mapping[str, PropertyDef], object_type: str):
        groups = _parse_groups(body.get("filterGroups") or [], defs)
        limit = _int_param(body.get("limit", SEARCH_DEFAULT_LIMIT), "limit")
        if not 0 <= limit <= SEARCH_MAX_LIMIT:
            raise HubSpotError(400, f"limit must be between 0 and {SEARCH_MAX_LIMIT}.")
        offset = _int_param(body.get("after") or 0, "after")
        if not 0 <= offset < SEARCH_WINDOW:
            message = (
                f"after must be below {SEARCH_WINDOW}: search returns at most {SEARCH_WINDOW} "
                "results per query; narrow the filters (e.g. hs_object_id > last seen) instead."
            )
            raise HubSpotError(400, message)
        return cls(
            groups=groups,
            sort=_parse_sort(body.get("sorts") or [], defs),
            text=str(body.get("query") or "").casefold().split(),
            text_properties=_QUERY_PROPERTIES[object_type],
            limit=limit,
            offset=offset,
        )

    def matches(self, props: Mapping[str, str]) -> bool:
        if self.text:
            haystack = " ".join(props.get(n, "") for n in self.text_properties).casefold()
            if not all(term in haystack for term in self.text):
                return False
        return not self.groups or any(all(f.matches(props) for f in g) for g in self.groups)

    def prefilter(self) -> tuple[str, list]:
        """SQL narrowing the scan by the range filters every filter group has: record id, and
        datetimes (stored normalized, so text order is time order). A superset of matches."""
        if not self.groups:
            return "", []
        sql, params = "", []
        ops = {"GT": ">", "GTE": ">=", "LT": "<", "LTE": "<="}
        common = [f for f in self.groups[0] if all(f in g for g in self.groups[1:])]
        # A modified-since range has an index of its own, far narrower than "every id above
        # n" (which SQLite would pick otherwise): `+id` keeps the id range off the index.
        indexed = {"lastmodifieddate", "hs_lastmodifieddate"}
        by_time = any(f.defn.name in indexed and f.operator in ops for f in common)
        for f in common:
            if f.operator not in ops:
                continue
            if f.defn.name == "hs_object_id":
                sql += f" AND {'+id' if by_time else 'id'} {ops[f.operator]} ?"
                params.append(int(f.values[0]))
            elif f.defn.type == "datetime":
                sql += f" AND json_extract(properties, '$.{f.defn.name}') {ops[f.operator]} ?"
                params.append(f.values[0])
        return sql, params

    def property_names(self) -> list[str]:
        """The properties filters, sort and free text look at (names are validated)."""
        names = [f.defn.name for group in self.groups for f in group]
        names += [self.sort[0].name] if self.sort else []
        names += self.text_properties if self.text else []
        return list(dict.fromkeys(names))

    def order(self, rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
        """Sort (id, properties) rows by the one rule; ties and unset values last, by id."""
        rows = sorted(rows, key=lambda row: row[0])
        if self.sort is None:
            return rows
        defn, descending = self.sort
        keyed = [(_stored_keys(defn, props), (rid, props)) for rid, props in rows]
        present = [(keys[0], row) for keys, row in keyed if keys]
        present.sort(key=lambda kr: kr[0], reverse=descending)  # stable: ties keep id order
        return [row for _, row in present] + [row for keys, row in keyed if not keys]


def _int_param(raw: Any, name: str) -> int:
    try:
        return int(str(raw))
    except ValueError:
        raise HubSpotError(400, f"{name} must be an integer, got {raw!r}.") from None


def _parse_groups(raw: Any, defs: Mapping[str, PropertyDef]) -> list[list[SearchFilter]]:
    if not isinstance(raw, list) or len(raw) > SEARCH_MAX_GROUPS:
        raise HubSpotError(400, f"At most {SEARCH_MAX_GROUPS} filterGroups are allowed.")
    groups = [(g or {}).get("filters") or [] for g in raw]
    if any(len(g) > SEARCH_MAX_FILTERS_PER_GROUP for g in groups):
        raise HubSpotError(400, f"At most {SEARCH_MAX_FILTERS_PER_GROUP} filters per group.")
    if sum(len(g) for g in groups) > SEARCH_MAX_FILTERS:
        raise HubSpotError(400, f"At most {SEARCH_MAX_FILTERS} filters in total.")
    return [[SearchFilter.parse(f, defs) for f in g] for g in groups if g]


def _parse_sort(raw: Any, defs: Mapping[str, PropertyDef]) -> tuple[PropertyDef, bool] | None:
    """Sorts as strings ('name' or '-name', the SDK's type) or {propertyName, direction}."""
    if not raw:
        return None
    if not isinstance(raw, list) or len(raw) > 1:
        raise HubSpotError(400, "Only one sort rule is supported.")
    rule = raw[0]
    if isinstance(rule, str):
        name, descending = rule.lstrip("-"), rule.startswith("-")
    elif isinstance(rule, dict):
        name = rule.get("propertyName")
        descending = str(rule.get("direction", "ASCENDING")).upper() == "DESCENDING"
    else:
        raise HubSpotError(400, "A sort must be a property name or {propertyName, direction}.")
    if name not in defs:
        raise HubSpotError(400, f"Cannot sort by unknown property {name!r}.")
    return defs[name], descending


# ---------------------------------------------------------------- the Python API


class HubSpotStore:
    """Seeding and inspection of the sandbox CRM without HTTP (world generator, CLI, tests).

    Every method runs in one transaction and applies the same validation as the HTTP API;
    invalid input raises HubSpotError and leaves the store unchanged.
    """

    NATURAL_KEYS = {"contacts": "email", "companies": "domain"}

    def __init__(self, state: SandboxState):
        self.state = state

    @contextmanager
    def transaction(self) -> Iterator[StoreTx]:
        with self.state.db() as conn:
            _ensure_schema(conn)
            yield StoreTx(conn)

    def upsert(
        self, object_type: str, records: list[dict[str, str]], id_property: str | None = None
    ) -> list[tuple[str, bool]]:
        """Create or update records keyed on `id_property` -> [(id, created)] in input order.

        `id_property` defaults to email (contacts) / domain (companies); any property works here,
        unlike the HTTP API which needs a unique one. Repeated keys update the same record.
        """
        object_type = canonical_type(object_type)
        key = id_property or self.NATURAL_KEYS.get(object_type)
        if key in (None, "hs_object_id"):  # record ids can't be chosen, so there is no "insert"
            raise ValueError(f"upserting {object_type} needs a property to key on, not {key}")
        with self.transaction() as tx:
            cleaned = [tx.check_values(object_type, r) for r in records]
            if any(c.get(key) is None for c in cleaned):
                raise HubSpotError(400, f"every record needs a value for {key}")
            existing = tx.find(object_type, key, [c[key] for c in cleaned])
            fetched = tx.fetch(object_type, existing.values())
            out = []
            for clean in cleaned:
                record = fetched.get(existing.get(clean[key], -1))
                if record is None:
                    record = tx.insert(object_type, clean)
                    existing[clean[key]] = record.id
                    out.append((str(record.id), True))
                else:
                    record = tx.update(record, clean)
                    out.append((str(record.id), False))
                fetched[record.id] = record
            return out

    def create(self, object_type: str, records: list[dict[str, str]]) -> list[str]:
        """Create records -> their ids, in input order."""
        object_type = canonical_type(object_type)
        with self.transaction() as tx:
            cleaned = [tx.check_values(object_type, r) for r in records]
            issues = [i for c in cleaned for i in tx.missing_required(object_type, c)]
            if issues:
                raise validation_error(issues)
            return [str(tx.insert(object_type, c).id) for c in cleaned]

    def associate(
        self,
        from_type: str,
        from_id: str | int,
        to_type: str,
        to_id: str | int,
        type_id: int | None = None,
    ) -> None:
        """Associate two records (and the inverse); type_id defaults to the unlabeled type."""
        self.associate_many(from_type, to_type, [(from_id, to_id)], type_id)

    def associate_many(
        self,
        from_type: str,
        to_type: str,
        pairs: Iterable[tuple[str | int, str | int]],
        type_id: int | None = None,
    ) -> int:
        """Many associations of one type in one transaction -> how many pairs."""
        from_type, to_type = canonical_type(from_type), canonical_type(to_type)
        pairs = [(int(f), int(t)) for f, t in pairs]
        with self.transaction() as tx:
            return tx.associate(from_type, to_type, pairs, type_id)

    def associations(self, from_type: str, from_id: str | int, to_type: str) -> list[dict]:
        """[{"to_id": str, "type_ids": [int]}] for one record."""
        from_type, to_type = canonical_type(from_type), canonical_type(to_type)
        with self.transaction() as tx:
            linked = tx.associations(from_type, to_type, [int(from_id)]).get(int(from_id), {})
        return [{"to_id": str(t), "type_ids": ids} for t, ids in linked.items()]

    def merge(self, object_type: str, primary_id: str | int, secondary_id: str | int) -> dict:
        """Merge two records as the HTTP API does (StoreTx.merge) -> the NEW record, with all
        its stored properties: {"id", "properties"}."""
        with self.transaction() as tx:
            return _plain(tx.merge(canonical_type(object_type), primary_id, secondary_id), None)

    def define_property(self, object_type: str, spec: dict) -> dict:
        """Create a property from a PropertyCreate-shaped dict (camelCase) -> ModelProperty."""
        with self.transaction() as tx:
            return tx.create_property(canonical_type(object_type), spec).to_api()

    def define_group(self, object_type: str, name: str, label: str) -> dict:
        with self.transaction() as tx:
            return tx.create_group(canonical_type(object_type), {"name": name, "label": label})

    def list(self, object_type: str, properties: list[str] | None = None) -> list[dict]:
        """All live records in id order: {"id", "properties"} (all stored ones when None)."""
        object_type = canonical_type(object_type)
        with self.transaction() as tx:
            return [_plain(r, properties) for r in tx.records(object_type)]

    def count(self, object_type: str) -> int:
        with self.transaction() as tx:
            return tx.count(canonical_type(object_type))

    def get_by(self, object_type: str, property: str, value: str) -> dict | None:
        """The first record whose `property` equals `value` (normalized like a write), or None."""
        object_type = canonical_type(object_type)
        with self.transaction() as tx:
            defn = tx.defs(object_type).get(property)
            if defn is None:
                raise validation_error(tx.schema_issues(object_type, [property]))
            try:
                wanted = coerce_value(defn, value)
            except InvalidValue:
                return None
            found = tx.find(object_type, property, [wanted]) if wanted is not None else {}
            record = tx.fetch(object_type, found.values()).get(found.get(wanted, -1))
            return _plain(record, None) if record else None


def _plain(record: Record, properties: list[str] | None) -> dict:
    props = record.properties
    if properties is not None:
        props = {n: props.get(n) for n in properties}
    return {"id": str(record.id), "properties": dict(props)}
