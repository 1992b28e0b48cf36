"""Merging two records in the sandbox HubSpot emulator, driven through hubspot-api-client.

HubSpot's current merge makes a NEW record with a new id; both old ids point to it. A sync keyed
on email must survive that: the primary email finds the new record, the secondary one (now in
hs_additional_emails) is free, so upserting it creates a new contact (docs/hubspot-merge.md).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from hubspot import HubSpot
from hubspot.crm import companies, contacts, properties
from hubspot.crm.associations import v4 as assoc
from hubspot.crm.contacts import exceptions as contact_errors

from sandbox.hubspot import HubSpotStore
from sandbox.hubspot_store import HubSpotError
from tests.sandbox.test_hubspot_conformance import read_contacts, upsert_contacts

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
MERGE_PROPS = ["email", "hs_additional_emails", "hs_merged_object_ids"]


# ---------------------------------------------------------------- helpers


def sdk(state) -> HubSpot:
    return HubSpot(access_token=state.credentials["hubspot"]["access_token"], host=state.base_url)


def body_of(error) -> dict:
    return json.loads(error.body)


def define_pql_score(hs: HubSpot) -> None:
    """A custom property, as the pipeline creates it."""
    hs.crm.properties.groups_api.create(
        object_type="contacts",
        property_group_create=properties.PropertyGroupCreate(name="pql", label="PQL"),
    )
    create = properties.PropertyCreate(
        name="pql_score", label="PQL score", type="number", field_type="number", group_name="pql"
    )
    hs.crm.properties.core_api.create(object_type="contacts", property_create=create)


def search_contacts(hs: HubSpot, *filters: contacts.Filter, props=("email",)):
    request = contacts.PublicObjectSearchRequest(
        filter_groups=[contacts.FilterGroup(filters=list(filters))],
        properties=list(props),
        limit=100,
    )
    return hs.crm.contacts.search_api.do_search(public_object_search_request=request)


def filt(name: str, operator: str, value=None) -> contacts.Filter:
    return contacts.Filter(property_name=name, operator=operator, value=value)


def merge_contacts(hs: HubSpot, primary: str, secondary: str):
    merge = contacts.PublicMergeInput(primary_object_id=primary, object_id_to_merge=secondary)
    return hs.crm.contacts.basic_api.merge(public_merge_input=merge)


def ids_of(multi: str | None) -> set[str]:
    return set((multi or "").split(";")) - {""}


def two_contacts(hs: HubSpot) -> tuple[str, str]:
    """Ana (primary: newer, scored 87) and her older duplicate (scored 12, more fields)."""
    define_pql_score(hs)
    made = upsert_contacts(
        hs,
        {
            "ana@acme.io": {
                "firstname": "Ana",
                "pql_score": "87",
                "lifecyclestage": "lead",
                "createdate": (EPOCH + timedelta(days=30)).isoformat(),
            },
            "ana.old@acme.io": {
                "firstname": "Anna",
                "lastname": "Silva",
                "jobtitle": "CTO",
                "pql_score": "12",
                "lifecyclestage": "lead",
                "createdate": EPOCH.isoformat(),
            },
        },
    )
    by_email = {r.properties["email"]: r.id for r in made.results}
    return by_email["ana@acme.io"], by_email["ana.old@acme.io"]


# ---------------------------------------------------------------- the merged record


def test_merge_makes_a_new_record_with_the_primarys_values(sandbox):
    hs = sdk(sandbox)
    primary, secondary = two_contacts(hs)
    merged = merge_contacts(hs, primary, secondary)

    assert type(merged).__name__ == "SimplePublicObject"
    assert merged.id not in (primary, secondary)
    assert int(merged.id) > max(int(primary), int(secondary))
    assert merged.archived is False
    props = merged.properties
    assert props["hs_object_id"] == merged.id
    assert props["email"] == "ana@acme.io"  # the primary's
    assert props["firstname"] == "Ana"  # the primary's value wins
    assert props["lastname"] == "Silva"  # the primary never had one: the secondary's
    assert props["createdate"] == "2026-01-01T00:00:00.000Z"  # the older of the two
    assert merged.created_at == EPOCH
    assert merged.updated_at > EPOCH + timedelta(days=30)
    assert datetime.fromisoformat(props["lastmodifieddate"]) == merged.updated_at  # now

    again = hs.crm.contacts.basic_api.get_by_id(
        merged.id, properties=["pql_score", "jobtitle", *MERGE_PROPS]
    )
    assert again.properties["pql_score"] == "87"  # custom properties too
    assert again.properties["jobtitle"] == "CTO"
    assert again.properties["hs_additional_emails"] == "ana.old@acme.io"
    assert ids_of(again.properties["hs_merged_object_ids"]) == {primary, secondary}


def test_lifecycle_stage_furthest_down_the_funnel_wins(sandbox):
    store = HubSpotStore(sandbox)
    lead, customer, other = store.create(
        "contacts",
        [
            {"email": "lead@acme.io", "lifecyclestage": "lead"},
            {"email": "customer@acme.io", "lifecyclestage": "customer"},
            {"email": "other@acme.io", "lifecyclestage": "other"},
        ],
    )
    # HubSpot's documented exception to "the primary's values".
    merged = store.merge("contacts", lead, customer)
    assert merged["properties"]["lifecyclestage"] == "customer"
    # "other" is no stage of the funnel: the primary's value stands.
    merged = store.merge("contacts", other, merged["id"])
    assert merged["properties"]["lifecyclestage"] == "other"


def test_merge_properties_are_read_only(sandbox):
    hs = sdk(sandbox)
    with pytest.raises(contacts.ApiException) as err:
        upsert_contacts(hs, {"a@acme.io": {"hs_additional_emails": "b@acme.io"}})
    assert err.value.status == 400
    assert body_of(err.value)["errors"][0]["code"] == "READ_ONLY_VALUE"


# ---------------------------------------------------------------- old ids, list, search


def test_old_ids_point_to_the_merged_record(sandbox):
    hs = sdk(sandbox)
    primary, secondary = two_contacts(hs)
    merged = merge_contacts(hs, primary, secondary)

    for old in (primary, secondary):
        found = hs.crm.contacts.basic_api.get_by_id(old, properties=["email"])
        assert found.id == merged.id
        assert found.properties["email"] == "ana@acme.io"
    by_id = read_contacts(hs, [primary, secondary], ["email"], id_property=None)
    assert [r.id for r in by_id.results] == [merged.id]
    assert type(by_id).__name__ == "BatchResponseSimplePublicObject"  # 200: both found

    listed = hs.crm.contacts.get_all(properties=["email"])
    assert [r.id for r in listed] == [merged.id]
    assert HubSpotStore(sandbox).count("contacts") == 1


def test_search_sees_only_the_merged_record(sandbox):
    hs = sdk(sandbox)
    primary, secondary = two_contacts(hs)
    HubSpotStore(sandbox).create("contacts", [{"email": "bystander@acme.io"}])
    time.sleep(0.01)
    before = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    merged = merge_contacts(hs, primary, secondary)

    changed = search_contacts(hs, filt("lastmodifieddate", "GTE", before))
    assert [r.id for r in changed.results] == [merged.id]
    everyone = search_contacts(hs, filt("email", "HAS_PROPERTY"))
    assert {r.properties["email"] for r in everyone.results} == {
        "ana@acme.io",
        "bystander@acme.io",
    }
    assert everyone.total == 2
    for name in ("hs_merged_object_ids", "hs_additional_emails", "jobtitle", "pql_score"):
        assert [r.id for r in search_contacts(hs, filt(name, "HAS_PROPERTY")).results] == [
            merged.id
        ]
    # The secondary email is no longer anyone's `email`, but is one of the additional ones.
    assert search_contacts(hs, filt("email", "EQ", "ana.old@acme.io")).total == 0
    extra = search_contacts(hs, filt("hs_additional_emails", "EQ", "ana.old@acme.io"))
    assert [r.id for r in extra.results] == [merged.id]


# ---------------------------------------------------------------- email lookups (the sync)


def test_primary_email_resolves_to_the_merged_record(sandbox):
    hs = sdk(sandbox)
    primary, secondary = two_contacts(hs)
    merged = merge_contacts(hs, primary, secondary)

    read = read_contacts(hs, ["ana@acme.io"], ["email", "pql_score"])
    assert [(r.id, r.properties["pql_score"]) for r in read.results] == [(merged.id, "87")]
    written = upsert_contacts(hs, {"ana@acme.io": {"pql_score": "90"}})
    assert [(r.id, r.new) for r in written.results] == [(merged.id, False)]
    got = hs.crm.contacts.basic_api.get_by_id("ana@acme.io", id_property="email")
    assert got.id == merged.id


def test_secondary_email_is_free_after_the_merge(sandbox):
    hs = sdk(sandbox)
    primary, secondary = two_contacts(hs)
    merged = merge_contacts(hs, primary, secondary)

    # Looked up by email, the secondary address finds nothing: only `email` is matched.
    missing = read_contacts(hs, ["ana.old@acme.io"], ["email"])
    assert type(missing).__name__ == "BatchResponseSimplePublicObjectWithErrors"
    assert missing.results == []
    assert missing.errors[0].category == "OBJECT_NOT_FOUND"
    assert missing.errors[0].context == {"ids": ["ana.old@acme.io"]}
    with pytest.raises(contact_errors.NotFoundException):
        hs.crm.contacts.basic_api.get_by_id("ana.old@acme.io", id_property="email")

    # HubSpot lets a new record take a merged email address: upserting it creates a contact.
    written = upsert_contacts(hs, {"ana.old@acme.io": {"pql_score": "40"}})
    [fresh] = written.results
    assert fresh.new is True
    assert fresh.id not in (merged.id, primary, secondary)
    read = read_contacts(hs, ["ana.old@acme.io", "ana@acme.io"], ["email", "pql_score"])
    assert {r.properties["email"]: (r.id, r.properties["pql_score"]) for r in read.results} == {
        "ana.old@acme.io": (fresh.id, "40"),
        "ana@acme.io": (merged.id, "87"),
    }
    # The merged record keeps the address among its additional ones.
    kept = hs.crm.contacts.basic_api.get_by_id(merged.id, properties=MERGE_PROPS)
    assert kept.properties["hs_additional_emails"] == "ana.old@acme.io"


# ---------------------------------------------------------------- errors


def test_merge_errors(sandbox):
    hs = sdk(sandbox)
    primary, secondary = two_contacts(hs)

    with pytest.raises(contact_errors.NotFoundException) as unknown:
        merge_contacts(hs, primary, "424242")
    assert unknown.value.status == 404
    body = body_of(unknown.value)
    assert (body["status"], body["category"]) == ("error", "OBJECT_NOT_FOUND")
    assert body["context"] == {"ids": ["424242"]}
    assert body["correlationId"]

    with pytest.raises(contacts.ApiException) as itself:
        merge_contacts(hs, primary, primary)
    assert itself.value.status == 400
    assert body_of(itself.value)["category"] == "VALIDATION_ERROR"

    with pytest.raises(contacts.ApiException) as not_an_id:
        merge_contacts(hs, primary, "ana.old@acme.io")
    assert not_an_id.value.status == 400

    # Failed merges change nothing.
    assert {r.id for r in hs.crm.contacts.get_all()} == {primary, secondary}

    merged = merge_contacts(hs, primary, secondary)
    third = upsert_contacts(hs, {"third@acme.io": {}}).results[0].id
    for pair in ((secondary, third), (third, primary)):
        with pytest.raises(contacts.ApiException) as gone:
            merge_contacts(hs, *pair)
        assert gone.value.status == 400
        body = body_of(gone.value)
        assert body["category"] == "VALIDATION_ERROR"
        assert merged.id in body["message"]

    # Activities can't be merged; the JSON body is HubSpot's error shape.
    token = sandbox.credentials["hubspot"]["access_token"]
    answer = requests.post(
        f"{sandbox.base_url}/crm/v3/objects/meetings/merge",
        json={"primaryObjectId": "1", "objectIdToMerge": "2"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["category"] == "VALIDATION_ERROR"


# ---------------------------------------------------------------- associations, chains


def test_associations_move_to_the_merged_record(sandbox):
    hs = sdk(sandbox)
    store = HubSpotStore(sandbox)
    primary, secondary = two_contacts(hs)
    acme, beta = store.create("companies", [{"name": "Acme"}, {"name": "Beta"}])
    [deal] = store.create("deals", [{"dealname": "Beta renewal", "dealstage": "closedwon"}])
    store.associate("contacts", primary, "companies", acme, 1)  # Ana's primary company
    store.associate("contacts", secondary, "companies", beta, 1)  # and her duplicate's
    store.associate("deals", deal, "contacts", secondary)

    merged = merge_contacts(hs, primary, secondary).id

    linked = {
        a["to_id"]: a["type_ids"] for a in store.associations("contacts", merged, "companies")
    }
    # One "Primary" company: the primary record's; the secondary's stays, unlabeled.
    assert linked == {acme: [1, 279], beta: [279]}
    assert store.associations("companies", beta, "contacts") == [
        {"to_id": merged, "type_ids": [280]}
    ]
    request = assoc.BatchInputPublicFetchAssociationsBatchRequest(
        inputs=[assoc.PublicFetchAssociationsBatchRequest(id=deal)]
    )
    read = hs.crm.associations.v4.batch_api.get_page("deals", "contacts", request)
    assert [t.to_object_id for t in read.results[0].to] == [merged]
    for old in (primary, secondary):
        assert store.associations("contacts", old, "companies") == []


def test_successive_merges_point_every_old_id_to_the_latest(sandbox):
    store = HubSpotStore(sandbox)
    a, b, c = store.create("contacts", [{"email": f"{n}@acme.io"} for n in "abc"])
    first = store.merge("contacts", a, b)
    second = store.merge("contacts", c, first["id"])

    props = second["properties"]
    assert props["email"] == "c@acme.io"
    assert props["hs_additional_emails"].split(";") == ["a@acme.io", "b@acme.io"]
    assert ids_of(props["hs_merged_object_ids"]) == {a, b, c, first["id"]}
    hs = sdk(sandbox)
    for old in (a, b, c, first["id"]):
        assert hs.crm.contacts.basic_api.get_by_id(old).id == second["id"]
    with pytest.raises(HubSpotError) as gone:
        store.merge("contacts", a, second["id"])
    assert gone.value.status == 400 and second["id"] in gone.value.message


# ---------------------------------------------------------------- companies, store API


def test_companies_merge_keeps_the_primarys_domain(sandbox):
    hs = sdk(sandbox)
    made = hs.crm.companies.batch_api.create(
        {
            "inputs": [
                {"properties": {"name": "Acme", "domain": "acme.io"}},
                {"properties": {"name": "Acme Inc", "domain": "acme.com", "industry": "SaaS"}},
            ]
        }
    )
    primary, secondary = (r.id for r in made.results)
    merge = companies.PublicMergeInput(primary_object_id=primary, object_id_to_merge=secondary)
    merged = hs.crm.companies.basic_api.merge(public_merge_input=merge)

    assert merged.id not in (primary, secondary)
    assert (merged.properties["domain"], merged.properties["name"]) == ("acme.io", "Acme")
    got = hs.crm.companies.basic_api.get_by_id(
        secondary, properties=["industry", "hs_additional_domains", "hs_merged_object_ids"]
    )
    assert got.id == merged.id
    assert got.properties["industry"] == "SaaS"
    assert got.properties["hs_additional_domains"] == "acme.com"
    assert ids_of(got.properties["hs_merged_object_ids"]) == {primary, secondary}
    assert [r.id for r in hs.crm.companies.get_all()] == [merged.id]


def test_store_merge_without_http(sandbox):
    store = HubSpotStore(sandbox)
    primary, secondary = store.create(
        "contacts", [{"email": "p@acme.io", "firstname": "P"}, {"email": "s@acme.io"}]
    )
    merged = store.merge("contacts", primary, int(secondary))
    assert merged["properties"]["firstname"] == "P"
    assert store.get_by("contacts", "email", "p@acme.io")["id"] == merged["id"]
    assert store.get_by("contacts", "email", "s@acme.io") is None
    assert store.get_by("contacts", "hs_object_id", secondary)["id"] == merged["id"]
    assert [r["id"] for r in store.list("contacts")] == [merged["id"]]
    with pytest.raises(HubSpotError) as unknown:
        store.merge("contacts", merged["id"], "999999")
    assert unknown.value.status == 404


def test_an_older_sandbox_file_gets_the_merge_schema(sandbox):
    store = HubSpotStore(sandbox)
    store.create("contacts", [{"email": "a@acme.io"}])
    with sandbox.db() as conn:  # as a file made before merges existed
        conn.execute("DROP TABLE hubspot_merged_ids")
        conn.execute("DELETE FROM hubspot_properties WHERE name LIKE 'hs_%merged%'")
    a, b = store.create("contacts", [{"email": "b@acme.io"}, {"email": "c@acme.io"}])
    merged = store.merge("contacts", a, b)
    assert ids_of(merged["properties"]["hs_merged_object_ids"]) == {a, b}
    assert store.count("contacts") == 2
