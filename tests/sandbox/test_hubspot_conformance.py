"""Conformance of the sandbox HubSpot emulator, driven through the official hubspot-api-client.

Assertions are on returned fields, never only on "no exception": the SDK deserializes unexpected
statuses and empty bodies to empty objects silently (docs/hubspot.md §10).

Rate-limit tests send POSTs when they expect a 429 to surface: the SDK leaves urllib3's default
Retry(3) in place, which retries idempotent methods (GET, PUT, DELETE) on 429/503 whenever a
Retry-After header is present, sleeping for it; only POSTs fail straight away.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from hubspot import HubSpot
from hubspot.crm import companies, contacts, deals, properties
from hubspot.crm.associations import v4 as assoc
from hubspot.crm.contacts import exceptions as contact_errors
from hubspot.crm.objects import meetings as meeting_models
from hubspot.crm.properties import exceptions as property_errors
from urllib3.util.retry import Retry

from sandbox.hubspot import HubSpotStore
from sandbox.hubspot_store import HubSpotError

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- helpers


def sdk(state, retry: Retry | None = None, token: str | None = None) -> HubSpot:
    token = token or state.credentials["hubspot"]["access_token"]
    return HubSpot(access_token=token, host=state.base_url, retry=retry)


def body_of(error) -> dict:
    return json.loads(error.body)


def upsert_contacts(hs: HubSpot, rows: dict[str, dict]):
    inputs = [
        contacts.SimplePublicObjectBatchInputUpsert(id_property="email", id=email, properties=p)
        for email, p in rows.items()
    ]
    batch = contacts.BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs)
    return hs.crm.contacts.batch_api.upsert(
        batch_input_simple_public_object_batch_input_upsert=batch
    )


def read_contacts(hs: HubSpot, ids: list[str], props: list[str], id_property="email"):
    request = contacts.BatchReadInputSimplePublicObjectId(
        id_property=id_property,
        inputs=[contacts.SimplePublicObjectId(id=i) for i in ids],
        properties=props,
        properties_with_history=[],
    )
    return hs.crm.contacts.batch_api.read(
        batch_read_input_simple_public_object_id=request, archived=False
    )


def search_contacts(hs: HubSpot, **request):
    query = contacts.PublicObjectSearchRequest(**request)
    return hs.crm.contacts.search_api.do_search(public_object_search_request=query)


def filt(name: str, operator: str, value=None, values=None) -> contacts.Filter:
    return contacts.Filter(property_name=name, operator=operator, value=value, values=values)


def define_pql_properties(hs: HubSpot) -> None:
    """The custom properties a PQL sync creates (docs/hubspot.md §6 table)."""
    hs.crm.properties.groups_api.create(
        object_type="contacts",
        property_group_create=properties.PropertyGroupCreate(name="pql", label="PQL"),
    )
    yes_no = [
        properties.OptionInput(label="Yes", value="true", display_order=0, hidden=False),
        properties.OptionInput(label="No", value="false", display_order=1, hidden=False),
    ]
    tiers = [
        properties.OptionInput(label=t, value=t, display_order=i, hidden=False)
        for i, t in enumerate(["hot", "warm"])
    ]
    specs = [
        ("pql_score", "number", "number", {}),
        ("pql_flag", "bool", "booleancheckbox", {"options": yes_no}),
        ("pql_first_qualified_at", "datetime", "date", {}),
        ("pql_tier", "enumeration", "select", {"options": tiers}),
        ("pql_key", "string", "text", {"has_unique_value": True}),
    ]
    for name, type_, field_type, extra in specs:
        create = properties.PropertyCreate(
            name=name, label=name, type=type_, field_type=field_type, group_name="pql", **extra
        )
        hs.crm.properties.core_api.create(object_type="contacts", property_create=create)


def seed_contacts(state, n: int) -> list[dict]:
    """n contacts one day apart, with a cycle of lifecycle stages; returns what was written."""
    stages = ["lead", "customer", "opportunity"]
    rows = [
        {
            "email": f"user{i:02d}@acme.io",
            "firstname": f"User{i:02d}",
            "lifecyclestage": stages[i % 3],
            "createdate": (EPOCH + timedelta(days=i)).isoformat(),
        }
        for i in range(n)
    ]
    HubSpotStore(state).upsert("contacts", rows)
    return rows


# ---------------------------------------------------------------- batch endpoints


def test_upsert_creates_then_updates_with_new_flags_and_string_values(sandbox):
    hs = sdk(sandbox)
    define_pql_properties(hs)
    first = upsert_contacts(
        hs,
        {
            "ana@acme.io": {"firstname": "Ana", "pql_score": "87", "pql_flag": "true"},
            "bo@beta.dev": {"firstname": "Bo", "pql_first_qualified_at": "1767225600000"},
        },
    )
    assert type(first).__name__ == "BatchResponseSimplePublicUpsertObject"
    assert first.status == "COMPLETE"
    by_email = {r.properties["email"]: r for r in first.results}
    assert set(by_email) == {"ana@acme.io", "bo@beta.dev"}
    assert all(r.new for r in first.results)
    assert by_email["ana@acme.io"].properties["pql_score"] == "87"
    assert by_email["ana@acme.io"].properties["pql_flag"] == "true"
    # Epoch milliseconds come back as ISO-8601 UTC with milliseconds.
    assert by_email["bo@beta.dev"].properties["pql_first_qualified_at"] == (
        "2026-01-01T00:00:00.000Z"
    )
    assert by_email["ana@acme.io"].properties["hs_object_id"] == by_email["ana@acme.io"].id

    second = upsert_contacts(
        hs, {"ANA@acme.io": {"pql_score": "91"}, "cy@gamma.org": {"firstname": "Cy"}}
    )
    again = {r.properties["email"]: r for r in second.results}
    assert again["ana@acme.io"].new is False  # email ids match case-insensitively
    assert again["ana@acme.io"].id == by_email["ana@acme.io"].id
    assert again["ana@acme.io"].properties["pql_score"] == "91"
    assert again["cy@gamma.org"].new is True
    assert again["ana@acme.io"].updated_at >= by_email["ana@acme.io"].updated_at
    stored = read_contacts(hs, ["ana@acme.io"], ["pql_score", "firstname", "pql_flag"])
    assert stored.results[0].properties["firstname"] == "Ana"  # untouched by the update
    assert stored.results[0].properties["pql_score"] == "91"


def test_upsert_partial_failure_is_207_with_context_ids(sandbox):
    hs = sdk(sandbox)
    define_pql_properties(hs)
    answer = upsert_contacts(
        hs,
        {
            "ok@acme.io": {"pql_score": "12"},
            "bad-score@acme.io": {"pql_score": "lots"},
            "bad-tier@acme.io": {"pql_tier": "lukewarm", "pql_flag": "yes"},
        },
    )
    assert type(answer).__name__ == "BatchResponseSimplePublicUpsertObjectWithErrors"
    assert answer.status == "COMPLETE" and answer.num_errors == 2
    assert [r.properties["email"] for r in answer.results] == ["ok@acme.io"]
    by_id = {e.context["ids"][0]: e for e in answer.errors}
    assert set(by_id) == {"bad-score@acme.io", "bad-tier@acme.io"}
    assert by_id["bad-score@acme.io"].category == "VALIDATION_ERROR"
    assert [(d.code, d._in) for d in by_id["bad-score@acme.io"].errors] == [
        ("INVALID_INTEGER", "pql_score")
    ]
    assert {d.code for d in by_id["bad-tier@acme.io"].errors} == {
        "INVALID_OPTION",
        "INVALID_BOOLEAN",
    }
    # Failed records were not written.
    missing = read_contacts(hs, ["bad-score@acme.io", "bad-tier@acme.io"], ["email"])
    assert missing.results == [] and missing.errors[0].category == "OBJECT_NOT_FOUND"


def test_upsert_rejects_duplicate_ids_and_non_unique_id_property(sandbox):
    hs = sdk(sandbox)
    with pytest.raises(contacts.ApiException) as dup:
        upsert_contacts(hs, {"x@acme.io": {"firstname": "A"}, "X@ACME.IO": {"firstname": "B"}})
    assert dup.value.status == 400
    assert "Duplicate IDs" in body_of(dup.value)["message"]
    assert HubSpotStore(sandbox).count("contacts") == 0

    bad_key = contacts.SimplePublicObjectBatchInputUpsert(
        id_property="firstname", id="Ana", properties={"lastname": "L"}
    )
    with pytest.raises(contacts.ApiException) as non_unique:
        hs.crm.contacts.batch_api.upsert(
            contacts.BatchInputSimplePublicObjectBatchInputUpsert(inputs=[bad_key])
        )
    assert non_unique.value.status == 400
    assert "firstname" in body_of(non_unique.value)["message"]


def test_unknown_property_fails_the_whole_batch_with_400_naming_it(sandbox):
    hs = sdk(sandbox)
    with pytest.raises(contacts.ApiException) as err:
        upsert_contacts(hs, {"a@acme.io": {"firstname": "A"}, "b@acme.io": {"pql_scroe": "3"}})
    body = body_of(err.value)
    assert err.value.status == 400
    assert body["category"] == "VALIDATION_ERROR" and body["correlationId"]
    assert body["errors"] == [
        {
            "message": 'Property "pql_scroe" does not exist',
            "code": "PROPERTY_DOESNT_EXIST",
            "in": "pql_scroe",
            "context": {},
        }
    ]
    assert "pql_scroe" in body["message"]
    assert HubSpotStore(sandbox).count("contacts") == 0


def test_batch_read_reports_missing_ids_with_207(sandbox):
    hs = sdk(sandbox)
    upsert_contacts(hs, {"ana@acme.io": {"firstname": "Ana"}, "bo@beta.dev": {}})
    answer = read_contacts(
        hs, ["ana@acme.io", "nobody@x.io", "bo@beta.dev", "ghost@x.io"], ["firstname"]
    )
    assert type(answer).__name__ == "BatchResponseSimplePublicObjectWithErrors"
    assert [r.properties["firstname"] for r in answer.results] == ["Ana", None]
    assert answer.num_errors == 1
    assert answer.errors[0].category == "OBJECT_NOT_FOUND"
    assert answer.errors[0].context == {"ids": ["nobody@x.io", "ghost@x.io"]}

    by_record_id = read_contacts(hs, [answer.results[0].id], ["email"], id_property=None)
    assert type(by_record_id).__name__ == "BatchResponseSimplePublicObject"
    assert by_record_id.results[0].properties["email"] == "ana@acme.io"


def test_batch_update_by_record_id_and_create_statuses(sandbox):
    hs = sdk(sandbox)
    created = hs.crm.companies.batch_api.create(
        {"inputs": [{"properties": {"name": "Acme", "numberofemployees": "250"}}]}
    )
    assert type(created).__name__ == "BatchResponseSimplePublicObject"
    company_id = created.results[0].id
    assert created.results[0].properties["numberofemployees"] == "250"

    update = {
        "inputs": [
            {"id": company_id, "properties": {"numberofemployees": "300"}},
            {"id": "999999", "properties": {"name": "Ghost"}},
        ]
    }
    answer = hs.crm.companies.batch_api.update(update)
    assert answer.num_errors == 1 and answer.errors[0].context == {"ids": ["999999"]}
    assert answer.results[0].properties["numberofemployees"] == "300"

    # Without objectWriteTraceIds an invalid record fails the whole create (400) ...
    with pytest.raises(companies.ApiException) as whole:
        hs.crm.companies.batch_api.create(
            {"inputs": [{"properties": {"name": "A"}}, {"properties": {"annualrevenue": "x"}}]}
        )
    assert whole.value.status == 400
    # ... with them, the documented 207 names the failing input by its trace id.
    traced = hs.crm.companies.batch_api.create(
        {
            "inputs": [
                {"properties": {"name": "B"}, "objectWriteTraceId": "t1"},
                {"properties": {"annualrevenue": "x"}, "objectWriteTraceId": "t2"},
            ]
        }
    )
    assert [r.properties["name"] for r in traced.results] == ["B"]
    assert traced.errors[0].context == {"objectWriteTraceId": ["t2"]}
    assert HubSpotStore(sandbox).count("companies") == 2


# ---------------------------------------------------------------- search


def test_search_filters_sorting_and_paging(sandbox):
    rows = seed_contacts(sandbox, 25)
    hs = sdk(sandbox)
    since = EPOCH + timedelta(days=5)

    # IN is case-insensitive; GTE on a datetime accepts ISO-8601; two groups are ORed.
    answer = search_contacts(
        hs,
        filter_groups=[
            contacts.FilterGroup(
                filters=[
                    filt("lifecyclestage", "IN", values=["LEAD", "Customer"]),
                    filt("createdate", "GTE", value=since.isoformat()),
                ]
            ),
            contacts.FilterGroup(filters=[filt("firstname", "EQ", value="user02")]),
        ],
        sorts=[{"propertyName": "createdate", "direction": "DESCENDING"}],
        properties=["email", "lifecyclestage"],
        limit=200,
    )
    expected = [
        r["email"]
        for r in reversed(rows)
        if (r["lifecyclestage"] in ("lead", "customer") and r["createdate"] >= since.isoformat())
        or r["firstname"] == "User02"
    ]
    assert [r.properties["email"] for r in answer.results] == expected
    assert answer.total == len(expected) and answer.paging is None

    # Paging across several pages, epoch-ms datetime values, string sorts.
    cutoff_ms = int((EPOCH + timedelta(days=3)).timestamp() * 1000)
    seen, after, totals = [], None, set()
    while True:
        page = search_contacts(
            hs,
            filter_groups=[
                contacts.FilterGroup(filters=[filt("createdate", "GT", str(cutoff_ms))])
            ],
            sorts=["createdate"],
            properties=["email"],
            limit=10,
            after=after,
        )
        totals.add(page.total)
        seen += [r.properties["email"] for r in page.results]
        if page.paging is None:
            break
        after = page.paging.next.after
    assert totals == {21}
    assert seen == [r["email"] for r in rows[4:]]


def test_search_other_operators(sandbox):
    rows = seed_contacts(sandbox, 9)
    hs = sdk(sandbox)

    def emails(*filters):
        answer = search_contacts(
            hs,
            filter_groups=[contacts.FilterGroup(filters=list(filters))],
            properties=["email"],
            limit=100,
        )
        return [r.properties["email"] for r in answer.results]

    low, high = (EPOCH + timedelta(days=2)).isoformat(), (EPOCH + timedelta(days=4)).isoformat()
    between = contacts.Filter(
        property_name="createdate", operator="BETWEEN", value=low, high_value=high
    )
    assert emails(between) == [r["email"] for r in rows[2:5]]
    assert emails(filt("lifecyclestage", "NOT_IN", values=["lead", "customer"])) == [
        r["email"] for r in rows if r["lifecyclestage"] == "opportunity"
    ]
    assert emails(filt("email", "CONTAINS_TOKEN", "*@ACME.io")) == [r["email"] for r in rows]
    assert (
        emails(filt("email", "CONTAINS_TOKEN", "*@acme.io"), filt("hs_object_id", "LT", "0")) == []
    )
    assert emails(filt("firstname", "NEQ", "user00")) == [r["email"] for r in rows[1:]]
    assert emails(filt("jobtitle", "HAS_PROPERTY")) == []
    assert len(emails(filt("jobtitle", "NOT_HAS_PROPERTY"))) == len(rows)


def test_search_limits_are_400(sandbox):
    hs = sdk(sandbox)
    too_many_groups = [contacts.FilterGroup(filters=[filt("email", "HAS_PROPERTY")])] * 6
    bad_requests = [
        {"after": "10000"},
        {"limit": 201},
        {"filter_groups": too_many_groups},
        {"filter_groups": [contacts.FilterGroup(filters=[filt("nope", "EQ", "1")])]},
        {"sorts": ["createdate", "email"]},
    ]
    for request in bad_requests:
        with pytest.raises(contacts.ApiException) as err:
            search_contacts(hs, **request)
        assert err.value.status == 400, request
        assert body_of(err.value)["category"] == "VALIDATION_ERROR"


def test_search_has_its_own_secondly_limit_without_rate_headers(sandbox):
    hs = sdk(sandbox)
    sandbox.settings["hubspot_search_per_second"] = 1
    request = contacts.PublicObjectSearchRequest(limit=1)
    _, status, headers = hs.crm.contacts.search_api.do_search_with_http_info(request)
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("x-hubspot-ratelimit")]
    with pytest.raises(contacts.ApiException) as err:
        hs.crm.contacts.search_api.do_search(request)
    assert err.value.status == 429
    assert body_of(err.value)["message"] == "You have reached your secondly limit."
    # Other endpoints are not affected by the search limit.
    assert hs.crm.contacts.basic_api.get_page(limit=1).results == []


# ---------------------------------------------------------------- properties


def test_property_groups_and_properties(sandbox):
    hs = sdk(sandbox)
    groups, core = hs.crm.properties.groups_api, hs.crm.properties.core_api
    group = groups.create("contacts", properties.PropertyGroupCreate(name="pql", label="PQL"))
    assert (group.name, group.label, group.archived) == ("pql", "PQL", False)
    with pytest.raises(properties.ApiException) as again:
        groups.create("contacts", properties.PropertyGroupCreate(name="pql", label="PQL"))
    assert again.value.status == 409
    assert body_of(again.value)["category"] == "OBJECT_ALREADY_EXISTS"

    score = properties.PropertyCreate(
        name="pql_score", label="PQL score", type="number", field_type="number", group_name="pql"
    )
    made, status, _ = core.create_with_http_info("contacts", score)
    assert status == 201
    assert (made.name, made.type, made.field_type, made.group_name) == (
        "pql_score",
        "number",
        "number",
        "pql",
    )
    with pytest.raises(properties.ApiException) as dup:
        core.create("contacts", score)
    assert dup.value.status == 409
    assert core.get_by_name("contacts", "pql_score").label == "PQL score"
    with pytest.raises(property_errors.NotFoundException):
        core.get_by_name("contacts", "pql_missing")
    assert "pql_score" in {p.name for p in core.get_all("contacts").results}
    assert "email" in {p.name for p in core.get_all("contacts").results}

    invalid = [
        {"type": "number", "field_type": "text"},  # type/fieldType pair not allowed
        {"type": "enumeration", "field_type": "select"},  # options missing
        {"type": "string", "field_type": "text", "group_name": "nogroup"},
        {"type": "string", "field_type": "text", "label": None},  # required field missing
        {"type": "text", "field_type": "text"},
    ]
    for i, fields in enumerate(invalid):
        spec = {"name": f"pql_bad_{i}", "label": "Bad", "group_name": "pql"} | fields
        with pytest.raises(properties.ApiException) as err:
            core.create("contacts", properties.PropertyCreate(**spec))
        assert err.value.status == 400, fields

    # A custom property becomes writable and readable.
    upsert_contacts(hs, {"ana@acme.io": {"pql_score": "42.5"}})
    [ana] = read_contacts(hs, ["ana@acme.io"], ["pql_score"]).results
    # Only the requested property plus the ones HubSpot always returns.
    assert ana.properties.keys() == {"pql_score", "createdate", "hs_object_id", "lastmodifieddate"}
    assert ana.properties["pql_score"] == "42.5"


# ---------------------------------------------------------------- deals, meetings, associations


def test_deals_and_meetings_with_associations(sandbox):
    hs = sdk(sandbox)
    ana = upsert_contacts(hs, {"ana@acme.io": {}, "bo@beta.dev": {}}).results
    contact = {r.properties["email"]: r.id for r in ana}
    company = hs.crm.companies.batch_api.create({"inputs": [{"properties": {"name": "Acme"}}]})
    company_id = company.results[0].id

    def to(object_id: str, type_id: int) -> dict:
        spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
        return {"to": {"id": object_id}, "types": [spec]}

    won = {"dealname": "Acme expansion", "dealstage": "closedwon", "amount": "12000"}
    won["closedate"] = "2026-11-20T10:00:00Z"
    deal_inputs = deals.BatchInputSimplePublicObjectBatchInputForCreate(
        inputs=[
            {"properties": won, "associations": [to(contact["ana@acme.io"], 3), to(company_id, 5)]},
            {"properties": {"dealname": "Open", "dealstage": "appointmentscheduled"}},
        ]
    )
    made = hs.crm.deals.batch_api.create(deal_inputs)
    deal = {r.properties["dealname"]: r for r in made.results}
    assert deal["Acme expansion"].properties["closedate"] == "2026-11-20T10:00:00.000Z"
    stored = HubSpotStore(sandbox).get_by("deals", "dealname", "Acme expansion")["properties"]
    assert (stored["hs_is_closed_won"], stored["hs_is_closed"]) == ("true", "true")
    open_deal = HubSpotStore(sandbox).get_by("deals", "dealname", "Open")["properties"]
    assert (open_deal["hs_is_closed_won"], open_deal["hs_is_closed"]) == ("false", "false")

    meeting = {
        "hs_timestamp": "2026-11-18T15:00:00Z",
        "hs_meeting_title": "Intro",
        "hs_meeting_outcome": "COMPLETED",
    }
    meetings = hs.crm.objects.meetings.batch_api.create(
        meeting_models.BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[{"properties": meeting, "associations": [to(contact["ana@acme.io"], 200)]}]
        )
    )
    meeting_id = meetings.results[0].id
    assert meetings.results[0].properties["hs_meeting_outcome"] == "COMPLETED"
    with pytest.raises(meeting_models.ApiException) as no_time:  # hs_timestamp is required
        hs.crm.objects.meetings.batch_api.create(
            {"inputs": [{"properties": {"hs_meeting_title": "x"}}]}
        )
    assert no_time.value.status == 400

    # The default association endpoint links the meeting to the deal (and back).
    default = hs.crm.associations.v4.basic_api.create_default(
        "meetings", meeting_id, "deals", deal["Acme expansion"].id
    )
    assert {r.association_spec.association_type_id for r in default.results} == {212, 211}

    def read(from_type: str, to_type: str, ids: list[str]):
        request = assoc.BatchInputPublicFetchAssociationsBatchRequest(
            inputs=[assoc.PublicFetchAssociationsBatchRequest(id=i) for i in ids]
        )
        return hs.crm.associations.v4.batch_api.get_page(from_type, to_type, request)

    deal_id = deal["Acme expansion"].id
    to_contacts = read("deals", "contacts", [deal_id])
    assert type(to_contacts).__name__ == "BatchResponsePublicAssociationMultiWithLabel"
    [result] = to_contacts.results
    assert result._from.id == deal_id
    assert [(t.to_object_id, [a.type_id for a in t.association_types]) for t in result.to] == [
        (contact["ana@acme.io"], [3])
    ]
    to_company = read("deals", "companies", [deal_id]).results[0].to[0]
    assert sorted((a.type_id, a.label) for a in to_company.association_types) == [
        (5, "Primary"),
        (341, None),
    ]

    # Inverse associations exist; an object without any comes back as a 207 error.
    inverse = read("contacts", "meetings", [contact["ana@acme.io"], contact["bo@beta.dev"]])
    assert type(inverse).__name__ == "BatchResponsePublicAssociationMultiWithLabelWithErrors"
    assert inverse.results[0].to[0].to_object_id == meeting_id
    assert inverse.results[0].to[0].association_types[0].type_id == 199
    assert inverse.num_errors == 1
    assert inverse.errors[0].sub_category == "crm.associations.NO_ASSOCIATIONS_FOUND"
    assert inverse.errors[0].context == {"fromObjectId": [contact["bo@beta.dev"]]}
    deals_of_meeting = read("meetings", "deals", [meeting_id]).results[0].to
    assert [t.association_types[0].type_id for t in deals_of_meeting] == [212]


def test_association_reads_carry_numeric_ids_on_the_wire(sandbox):
    hs = sdk(sandbox)
    store = HubSpotStore(sandbox)
    [contact_id] = store.create("contacts", [{"email": "a@acme.io"}])
    [deal_id] = store.create("deals", [{"dealname": "D"}])
    store.associate("deals", deal_id, "contacts", contact_id)
    request = assoc.BatchInputPublicFetchAssociationsBatchRequest(
        inputs=[assoc.PublicFetchAssociationsBatchRequest(id=deal_id)]
    )
    # The SDK types toObjectId as str and converts; the raw answer shows the wire type.
    response = hs.crm.associations.v4.batch_api.get_page(
        "deals", "contacts", request, _preload_content=False
    )
    to = json.loads(response.data)["results"][0]["to"][0]
    assert to == {
        "toObjectId": int(contact_id),
        "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3, "label": None}],
    }


# ---------------------------------------------------------------- listing


def test_get_page_paging_and_get_by_id(sandbox):
    rows = seed_contacts(sandbox, 7)
    hs = sdk(sandbox)
    first = hs.crm.contacts.basic_api.get_page(limit=3, properties=["email", "lifecyclestage"])
    assert [r.properties["email"] for r in first.results] == [r["email"] for r in rows[:3]]
    assert first.results[0].properties["lifecyclestage"] == "lead"
    assert first.paging.next.after
    everything = hs.crm.contacts.get_all(properties=["email"])
    assert [r.properties["email"] for r in everything] == [r["email"] for r in rows]

    one = hs.crm.contacts.basic_api.get_by_id(first.results[1].id, properties=["firstname"])
    assert one.properties["firstname"] == rows[1]["firstname"]
    with pytest.raises(contact_errors.NotFoundException):
        hs.crm.contacts.basic_api.get_by_id("424242")
    with pytest.raises(contacts.ApiException) as err:
        hs.crm.contacts.basic_api.get_page(limit=101)
    assert err.value.status == 400


# ---------------------------------------------------------------- auth, rate limits, faults


def test_wrong_token_is_401(sandbox):
    hs = sdk(sandbox, token="pat-na1-00000000-0000-0000-0000-000000000000")
    with pytest.raises(contact_errors.UnauthorizedException) as err:
        hs.crm.contacts.basic_api.get_page()
    assert err.value.status == 401
    assert body_of(err.value)["category"] == "INVALID_AUTHENTICATION"


def test_ten_secondly_limit_answers_429_with_retry_after_and_body(sandbox):
    hs = sdk(sandbox)
    sandbox.settings["hubspot_requests_per_10s"] = 2
    remaining = []
    for _ in range(2):
        _, status, headers = hs.crm.contacts.basic_api.get_page_with_http_info(limit=1)
        assert status == 200
        assert headers["X-HubSpot-RateLimit-Max"] == "2"
        assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
        assert int(headers["X-HubSpot-RateLimit-Daily-Remaining"]) > 0
        remaining.append(headers["X-HubSpot-RateLimit-Remaining"])
    assert remaining == ["1", "0"]
    # A POST: urllib3's default Retry(3) would silently honour Retry-After on a GET (module doc).
    with pytest.raises(contacts.ApiException) as err:
        read_contacts(hs, ["a@acme.io"], ["email"])
    assert err.value.status == 429
    assert 1 <= int(err.value.headers["Retry-After"]) <= 10
    body = body_of(err.value)
    assert body["status"] == "error" and body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert body["correlationId"] and body["requestId"]


def test_daily_limit_answers_429_daily(sandbox):
    hs = sdk(sandbox)
    sandbox.settings["hubspot_daily_limit"] = 1
    assert hs.crm.contacts.basic_api.get_page(limit=1).results == []
    with pytest.raises(contacts.ApiException) as err:
        read_contacts(hs, ["a@acme.io"], ["email"])
    assert err.value.status == 429
    assert body_of(err.value)["policyName"] == "DAILY"
    assert body_of(err.value)["message"] == "You have reached your daily limit."
    assert int(err.value.headers["Retry-After"]) > 0


def retrying() -> Retry:
    return Retry(
        total=4,
        backoff_factor=0.1,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )


def test_retrying_client_gets_through_the_rolling_limit(sandbox):
    # A 1 s window keeps the test fast; Retry-After then says 1 s, which urllib3 honours.
    sandbox.settings |= {"hubspot_requests_per_10s": 1, "hubspot_rate_window_s": 1}
    plain, patient = sdk(sandbox), sdk(sandbox, retry=retrying())
    upsert_contacts(plain, {"a@acme.io": {}})
    with pytest.raises(contacts.ApiException) as err:
        upsert_contacts(plain, {"b@acme.io": {}})
    assert err.value.headers["Retry-After"] == "1"
    started = time.monotonic()
    answer = upsert_contacts(patient, {"b@acme.io": {"firstname": "B"}})  # a POST: retried too
    assert time.monotonic() - started >= 0.5  # it waited for the window instead of failing
    assert answer.results[0].properties["firstname"] == "B" and answer.results[0].new


def test_injected_faults(sandbox):
    hs = sdk(sandbox)
    sandbox.queue_fault("hubspot", 503)
    with pytest.raises(contact_errors.ServiceException) as err:
        hs.crm.contacts.basic_api.get_page(limit=1)
    assert err.value.status == 503
    assert body_of(err.value)["message"] == "internal error"
    assert hs.crm.contacts.basic_api.get_page(limit=1).results == []  # one fault only

    sandbox.queue_fault("hubspot", 429, count=2)
    answer = upsert_contacts(sdk(sandbox, retry=retrying()), {"a@acme.io": {"firstname": "A"}})
    assert answer.results[0].properties["firstname"] == "A"
    assert sandbox.take_fault("hubspot") is None  # both faults were consumed by retries


# ---------------------------------------------------------------- the Python seeding API


def test_store_seeding_api(sandbox):
    store = HubSpotStore(sandbox)
    rows = [{"email": f"u{i}@acme.io", "firstname": f"U{i}"} for i in range(2000)]
    started = time.monotonic()
    first = store.upsert("contacts", rows)
    assert time.monotonic() - started < 5
    assert len(first) == 2000 and all(created for _, created in first)
    again = store.upsert("contacts", [{"email": "U7@ACME.IO", "lastname": "Seven"}])
    assert again == [(first[7][0], False)]
    assert store.count("contacts") == 2000
    seven = store.get_by("contacts", "email", "u7@acme.io")
    assert seven["id"] == first[7][0]
    assert (seven["properties"]["firstname"], seven["properties"]["lastname"]) == ("U7", "Seven")
    assert store.get_by("contacts", "email", "nobody@acme.io") is None
    listed = store.list("contacts", ["email", "lastname"])
    assert listed[7] == {
        "id": first[7][0],
        "properties": {"email": "u7@acme.io", "lastname": "Seven"},
    }

    company = store.upsert("companies", [{"domain": "acme.io", "name": "Acme"}])
    assert store.upsert("companies", [{"domain": "acme.io", "name": "Acme Inc"}]) == [
        (company[0][0], False)
    ]
    store.associate("contacts", first[0][0], "companies", company[0][0])
    store.associate("contacts", first[1][0], "companies", company[0][0], type_id=1)
    assert store.associations("companies", company[0][0], "contacts") == [
        {"to_id": first[0][0], "type_ids": [280]},
        {"to_id": first[1][0], "type_ids": [2, 280]},
    ]
    [deal_id] = store.create("deals", [{"dealname": "D", "dealstage": "closedlost"}])
    assert store.list("deals", ["hs_is_closed_won", "hs_is_closed"])[0]["properties"] == {
        "hs_is_closed_won": "false",
        "hs_is_closed": "true",
    }

    # All or nothing: one invalid record rejects the call and writes nothing.
    with pytest.raises(HubSpotError) as bad:
        store.upsert("contacts", [{"email": "new@acme.io"}, {"email": "x@acme.io", "nope": "1"}])
    assert bad.value.status == 400 and "nope" in bad.value.message
    with pytest.raises(HubSpotError):
        store.associate("deals", deal_id, "contacts", "1")  # no such contact
    assert store.get_by("contacts", "email", "new@acme.io") is None


def test_records_are_stamped_on_the_sandbox_clock(sandbox):
    """A replayed day moves the sandbox clock: HubSpot's updatedAt and lastmodifieddate follow
    it, as Mixpanel's and Amplitude's clocks do (one clock for every emulator)."""
    import requests
    from hubspot.crm.contacts import (
        BatchInputSimplePublicObjectBatchInputForCreate,
        SimplePublicObjectInputForCreate,
    )

    ahead = 3 * 86400
    requests.post(f"{sandbox.base_url}/_sandbox/settings", json={"clock_offset_s": ahead},
                  timeout=10).raise_for_status()  # fmt: skip
    made = (
        sdk(sandbox)
        .crm.contacts.batch_api.create(
            BatchInputSimplePublicObjectBatchInputForCreate(
                inputs=[SimplePublicObjectInputForCreate(properties={"email": "clock@acme.io"})]
            )
        )
        .results[0]
    )
    expected = datetime.now(UTC) + timedelta(seconds=ahead)
    assert abs((made.updated_at - expected).total_seconds()) < 60
