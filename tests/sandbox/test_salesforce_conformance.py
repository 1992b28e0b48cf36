"""Conformance of the sandbox Salesforce emulator, driven through simple-salesforce 1.12.10 (REST,
Bulk 2.0, its own OAuth/SOAP logins) and the Airflow provider's SalesforceHook.

simple-salesforce only speaks https: the sandbox serves the same app with TLS at
`sandbox.salesforce_url`, and clients trust its CA through a requests session (trust_env off,
since this machine exports REQUESTS_CA_BUNDLE). docs/salesforce.md is cited by section.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceOperationError,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sandbox import salesforce, world
from sandbox.salesforce import SalesforceStore, credentials, login_domain, tls_files
from sandbox.salesforce_store import DEFAULT_CUSTOM_FIELDS, make_id, normalize_id
from sandbox.server import connection_env

MISSING_LEAD = make_id("00Q", 99_999)  # well-formed, never allocated
OBJECTS = ["Lead", "Contact", "Account", "Task", "Event", "Opportunity", "OpportunityContactRole"]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def http(sandbox) -> Iterator[requests.Session]:
    """A requests session that trusts the sandbox's CA (and ignores REQUESTS_CA_BUNDLE)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(tls_files(sandbox)["ca"])
    yield session
    session.close()


def get_token(sandbox, http, grant: str = "client_credentials", **overrides) -> requests.Response:
    creds = credentials(sandbox)
    form = {
        "grant_type": grant,
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
    }
    if grant == "password":
        form |= {
            "username": creds["username"],
            "password": creds["password"] + creds["security_token"],
        }
    form |= overrides
    return http.post(f"{sandbox.salesforce_url}/services/oauth2/token", data=form, timeout=10)


@pytest.fixture
def sf(sandbox, http) -> Salesforce:
    """simple-salesforce in direct-session mode, with a client-credentials token
    (docs/salesforce.md §9)."""
    token = get_token(sandbox, http).json()["access_token"]
    return Salesforce(instance_url=sandbox.salesforce_url, session_id=token, session=http)


def login_sf(sandbox, http) -> Salesforce:
    """simple-salesforce logging in by itself (OAuth username-password), so it can re-login."""
    creds = credentials(sandbox)
    return Salesforce(
        username=creds["username"],
        password=creds["password"] + creds["security_token"],
        consumer_key=creds["client_id"],
        consumer_secret=creds["client_secret"],
        domain=login_domain(sandbox.salesforce_url),
        session=http,
    )


def leads(n: int, **extra) -> list[dict]:
    return [
        {"LastName": f"Lead{i:04d}", "Company": "Acme", "Email": f"lead{i:04d}@acme.io", **extra}
        for i in range(n)
    ]


def collection(sf: Salesforce, method: str, records: list[dict], path="", all_or_none=False):
    body = {"allOrNone": all_or_none, "records": records}
    return sf.restful(f"composite/sobjects{path}", method=method, json=body)


def lead(**values) -> dict:
    return {"attributes": {"type": "Lead"}, "LastName": "Ng", "Company": "Acme", **values}


def codes(result: dict) -> list[str]:
    return [e["statusCode"] for e in result["errors"]]


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------- OAuth and sessions (docs/salesforce.md §1)


def test_token_endpoint_grants_password_and_client_credentials(sandbox, http):
    creds = credentials(sandbox)
    for grant in ("password", "client_credentials"):
        response = get_token(sandbox, http, grant)
        assert response.status_code == 200
        body = response.json()
        assert set(body) >= {"access_token", "instance_url", "id", "token_type", "issued_at"}
        assert body["instance_url"] == sandbox.salesforce_url
        assert body["instance_url"].startswith("https://127.0.0.1:")
        assert body["token_type"] == "Bearer"
        assert body["access_token"].startswith("00D")
        expected = hmac.new(
            creds["client_secret"].encode(), (body["id"] + body["issued_at"]).encode(), "sha256"
        ).digest()
        assert base64.b64decode(body["signature"]) == expected
    # Client credentials may also come as a Basic header (simple-salesforce does that).
    basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    response = http.post(
        f"{sandbox.salesforce_url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200 and response.json()["access_token"]


@pytest.mark.parametrize(
    ("grant", "overrides", "error", "description"),
    [
        ("password", {"password": "wrong"}, "invalid_grant", "authentication failure"),
        ("password", {"username": "nobody@example.com"}, "invalid_grant", "authentication failure"),
        ("client_credentials", {"client_id": "3MVG9nope"}, "invalid_client_id", None),
        ("client_credentials", {"client_secret": "nope"}, "invalid_client", None),
        ("authorization_code", {}, "unsupported_grant_type", None),
    ],
)
def test_token_endpoint_rejects_bad_credentials(
    sandbox, http, grant, overrides, error, description
):
    response = get_token(sandbox, http, grant, **overrides)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == error and body["error_description"]
    if description:
        assert body["error_description"] == description


def test_simple_salesforce_login_failure_raises_authentication_failed(sandbox, http):
    creds = credentials(sandbox)
    with pytest.raises(SalesforceAuthenticationFailed) as failed:
        Salesforce(
            username=creds["username"],
            password="wrong",
            consumer_key=creds["client_id"],
            consumer_secret=creds["client_secret"],
            domain=login_domain(sandbox.salesforce_url),
            session=http,
        )
    assert failed.value.code == "invalid_grant"
    assert failed.value.auth_message == "authentication failure"


def test_expired_session_is_401_invalid_session_id(sandbox, sf):
    sandbox.settings["salesforce_session_seconds"] = 1
    assert sf.query("SELECT Id FROM Lead")["done"] is True
    time.sleep(1.6)
    with pytest.raises(SalesforceExpiredSession) as expired:
        sf.query("SELECT Id FROM Lead")
    assert expired.value.status == 401
    assert expired.value.content == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    bogus = Salesforce(
        instance_url=sandbox.salesforce_url, session_id="00Dxx!nope", session=sf.session
    )
    with pytest.raises(SalesforceExpiredSession):
        bogus.Lead.describe()


def test_simple_salesforce_relogs_in_after_the_session_expires(sandbox, http):
    sf = login_sf(sandbox, http)
    assert sf.query("SELECT Id FROM Lead")["totalSize"] == 0
    assert SalesforceStore(sandbox).expire_sessions() == 1
    # The 401 INVALID_SESSION_ID body is a JSON array, so simple-salesforce re-logs in
    # (docs/salesforce.md §9).
    assert sf.Lead.create(lead())["success"] is True
    assert sf.query("SELECT Id FROM Lead")["totalSize"] == 1
    assert sandbox.counters["salesforce.oauth_token"] == 2
    assert sandbox.counters["salesforce.401"] == 1


def test_soap_login_with_security_token(sandbox, http):
    creds = credentials(sandbox)
    host = sandbox.salesforce_url.removeprefix("https://")
    sf = Salesforce(
        username=creds["username"],
        password=creds["password"],
        security_token=creds["security_token"],
        domain=f"{host}/services/Soap/u/59.0#",
        session=http,
    )
    assert sf.sf_instance == host
    assert sf.query("SELECT COUNT() FROM Lead")["totalSize"] == 0
    with pytest.raises(SalesforceAuthenticationFailed) as failed:
        Salesforce(
            username=creds["username"],
            password=creds["password"],
            security_token="wrong",
            domain=f"{host}/services/Soap/u/59.0#",
            session=http,
        )
    assert failed.value.code == "INVALID_LOGIN"


# ---------------------------------------------------------------- describe


def test_describe_standard_objects_with_field_flags(sf):
    for name in OBJECTS:
        described = sf.__getattr__(name).describe()
        assert described["name"] == name
        fields = {f["name"]: f for f in described["fields"]}
        assert {"Id", "CreatedDate", "SystemModstamp"} <= set(fields)
        for f in fields.values():
            assert {"name", "type", "updateable", "createable", "nillable"} <= set(f)
    lead_fields = {f["name"]: f for f in sf.Lead.describe()["fields"]}
    assert lead_fields["Email"]["type"] == "email"
    assert lead_fields["IsConverted"]["updateable"] is False
    assert lead_fields["IsConverted"]["createable"] is False
    assert lead_fields["ConvertedContactId"]["referenceTo"] == ["Contact"]
    assert lead_fields["Company"]["nillable"] is False
    key = lead_fields["PQL_Key__c"]
    assert key["custom"] and key["externalId"] and key["createable"] and key["updateable"]
    assert lead_fields["PQL_Score__c"]["type"] == "double"
    event = {f["name"]: f for f in sf.Event.describe()["fields"]}
    assert event["WhoId"]["referenceTo"] == ["Lead", "Contact"]
    assert event["WhoId"]["relationshipName"] == "Who"
    stage = {f["name"]: f for f in sf.Opportunity.describe()["fields"]}["StageName"]
    assert "Closed Won" in [v["value"] for v in stage["picklistValues"]]
    assert {o["name"] for o in sf.describe()["sobjects"]} >= set(OBJECTS)
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.Lead__x.describe()
    assert missing.value.content[0]["errorCode"] == "NOT_FOUND"


def test_custom_fields_are_configurable_so_a_field_can_be_missing(sandbox, sf):
    custom = json.loads(json.dumps(DEFAULT_CUSTOM_FIELDS))
    del custom["Lead"]["PQL_Score__c"]
    custom["Lead"]["PQL_Tier__c"] = {"type": "picklist", "picklist": ["hot", "warm"]}
    sandbox.settings["salesforce_custom_fields"] = custom
    names = {f["name"] for f in sf.Lead.describe()["fields"]}
    assert "PQL_Score__c" not in names and "PQL_Tier__c" in names
    assert "PQL_Score__c" in {f["name"] for f in sf.Contact.describe()["fields"]}
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query("SELECT Id, PQL_Score__c FROM Lead")
    assert bad.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert "No such column 'PQL_Score__c' on entity 'Lead'" in bad.value.content[0]["message"]
    [result] = collection(sf, "POST", [lead(PQL_Score__c=10)])
    assert codes(result) == ["INVALID_FIELD"]
    [result] = collection(sf, "POST", [lead(PQL_Tier__c="hot")])
    assert result["success"] is True


# ---------------------------------------------------------------- SOQL (docs/salesforce.md §2)


def test_query_all_follows_next_records_url_pages(sandbox, sf):
    SalesforceStore(sandbox).create("Lead", leads(2101))
    first = sf.query("SELECT Id, Email FROM Lead")
    assert first["totalSize"] == 2101 and first["done"] is False and len(first["records"]) == 2000
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
    assert first["nextRecordsUrl"].endswith("-2000")
    everything = sf.query_all("SELECT Id, Email FROM Lead")
    assert everything["totalSize"] == 2101 and everything["done"] is True
    emails = [r["Email"] for r in everything["records"]]
    assert len(set(emails)) == 2101
    assert sandbox.counters["salesforce.query"] == 2
    assert sandbox.counters["salesforce.query_more"] == 1
    # A smaller batch size is honoured (200..2000, docs/salesforce.md §2).
    pages = sf.query_all("SELECT Id FROM Lead", headers={"Sforce-Query-Options": "batchSize=500"})
    assert len(pages["records"]) == 2101
    assert sandbox.counters["salesforce.query_more"] == 1 + 4
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query_more("/services/data/v59.0/query/01gNOPE-2000", identifier_is_url=True)
    assert bad.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


@pytest.fixture
def crm(sandbox) -> dict:
    """A small org: two accounts, leads (one converted), contacts, opportunities, events."""
    store = SalesforceStore(sandbox)
    t0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
    acme, beta = store.create(
        "Account", [{"Name": "Acme", "Website": "acme.io"}, {"Name": "Beta", "Website": "beta.dev"}]
    )
    lead_ids = store.create(
        "Lead",
        [
            {
                "LastName": "Ana",
                "Company": "Acme",
                "Email": "ana@acme.io",
                "CreatedDate": (t0 + timedelta(days=0)).isoformat(),
            },
            {
                "LastName": "Bo",
                "Company": "Beta",
                "Email": "bo@beta.dev",
                "CreatedDate": (t0 + timedelta(days=1)).isoformat(),
            },
            {
                "LastName": "Cy",
                "Company": "Acme",
                "Email": None,
                "CreatedDate": (t0 + timedelta(days=2)).isoformat(),
            },
            {
                "LastName": "O'Brien",
                "Company": "Beta",
                "Email": "ob@beta.dev",
                "CreatedDate": (t0 + timedelta(days=3)).isoformat(),
            },
        ],
    )
    ana_contact, bo_contact = store.create(
        "Contact",
        [
            {"LastName": "Ana", "Email": "ana@acme.io", "AccountId": acme},
            {"LastName": "Bo", "Email": "bo@beta.dev", "AccountId": beta},
        ],
    )
    won, open_ = store.create(
        "Opportunity",
        [
            {
                "Name": "Acme deal",
                "AccountId": acme,
                "StageName": "Closed Won",
                "CloseDate": "2026-03-20",
                "Amount": 12000,
            },
            {
                "Name": "Beta deal",
                "AccountId": beta,
                "StageName": "Qualification",
                "CloseDate": "2026-04-30",
                "Amount": 5000,
            },
        ],
    )
    store.create(
        "OpportunityContactRole",
        [
            {
                "OpportunityId": won,
                "ContactId": ana_contact,
                "Role": "Decision Maker",
                "IsPrimary": True,
            },
            {"OpportunityId": open_, "ContactId": bo_contact, "IsPrimary": True},
        ],
    )
    store.convert_lead(lead_ids[0], acme, ana_contact, won, date(2026, 3, 2))
    old = datetime.now(UTC) - timedelta(days=500)
    events = store.create(
        "Event",
        [
            {
                "Subject": "Intro",
                "WhoId": ana_contact,
                "WhatId": acme,
                "StartDateTime": (t0 + timedelta(days=1)).isoformat(),
                "DurationInMinutes": 30,
            },
            {
                "Subject": "Demo",
                "WhoId": lead_ids[1],
                "StartDateTime": (t0 + timedelta(days=2)).isoformat(),
                "DurationInMinutes": 45,
            },
            {
                "Subject": "Ancient",
                "WhoId": bo_contact,
                "StartDateTime": old.isoformat(),
                "DurationInMinutes": 30,
            },
        ],
    )
    return {
        "accounts": [acme, beta],
        "leads": lead_ids,
        "contacts": [ana_contact, bo_contact],
        "opportunities": [won, open_],
        "events": events,
    }


def test_soql_where_in_equals_null_dates_and_order_limit(sf, crm):
    def emails(soql: str, *args) -> list:
        return [r.get("Email") for r in sf.query_all(format_soql(soql, *args))["records"]]

    assert emails(
        "SELECT Email FROM Lead WHERE Email IN {} ORDER BY Email", ["bo@beta.dev", "ANA@acme.io"]
    ) == ["ana@acme.io", "bo@beta.dev"]  # SOQL string equality ignores case
    assert emails("SELECT Email FROM Lead WHERE Email = {}", "bo@beta.dev") == ["bo@beta.dev"]
    assert emails("SELECT Email FROM Lead WHERE Email != null ORDER BY Email DESC LIMIT 2") == [
        "ob@beta.dev",
        "bo@beta.dev",
    ]
    assert emails("SELECT Email FROM Lead WHERE Email = null") == [None]
    since = datetime(2026, 3, 2, 0, tzinfo=UTC)
    assert emails(
        "SELECT Email FROM Lead WHERE CreatedDate > {} AND CreatedDate < {} ORDER BY CreatedDate",
        since,
        since + timedelta(days=2),
    ) == ["bo@beta.dev", None]
    assert emails(
        "SELECT Email FROM Lead WHERE CreatedDate >= 2026-03-04T00:00:00Z OR Email LIKE 'ana%'"
        " ORDER BY Email NULLS LAST"
    ) == ["ana@acme.io", "ob@beta.dev"]
    assert emails(
        "SELECT Email FROM Lead WHERE (Company = 'Acme' OR Company = 'Beta') AND Email != null"
        " AND IsConverted = false ORDER BY Email"
    ) == ["bo@beta.dev", "ob@beta.dev"]
    assert sf.query("SELECT COUNT() FROM Lead WHERE Company = 'Acme'") == {
        "totalSize": 2,
        "done": True,
        "records": [],
    }
    recent = sf.query("SELECT Id FROM Lead WHERE SystemModstamp = LAST_N_DAYS:1")
    assert recent["totalSize"] == 1  # only the converted lead was modified since (today)
    assert emails("SELECT Email FROM Lead WHERE Id = {}", crm["leads"][1][:15]) == ["bo@beta.dev"]


def test_soql_relationships_conversion_fields_and_contact_roles(sf, crm):
    [converted] = sf.query_all(
        "SELECT Id, IsConverted, ConvertedDate, ConvertedContactId, ConvertedAccountId,"
        " ConvertedOpportunityId, ConvertedContact.Email FROM Lead WHERE IsConverted = true"
    )["records"]
    assert converted["Id"] == crm["leads"][0]
    assert converted["ConvertedDate"] == "2026-03-02"
    assert converted["ConvertedContactId"] == crm["contacts"][0]
    assert converted["ConvertedAccountId"] == crm["accounts"][0]
    assert converted["ConvertedOpportunityId"] == crm["opportunities"][0]
    assert converted["ConvertedContact"]["Email"] == "ana@acme.io"
    assert converted["ConvertedContact"]["attributes"]["type"] == "Contact"
    roles = sf.query_all(
        format_soql(
            "SELECT ContactId, OpportunityId, Opportunity.IsWon, Opportunity.CloseDate,"
            " Opportunity.Amount, Opportunity.Account.Name FROM OpportunityContactRole"
            " WHERE ContactId IN {} ORDER BY Opportunity.CloseDate",
            crm["contacts"],
        )
    )["records"]
    assert [(r["Opportunity"]["IsWon"], r["Opportunity"]["CloseDate"]) for r in roles] == [
        (True, "2026-03-20"),
        (False, "2026-04-30"),
    ]
    assert roles[0]["Opportunity"]["Amount"] == 12000.0
    assert roles[0]["Opportunity"]["Account"]["Name"] == "Acme"
    opportunity = sf.query(
        "SELECT IsClosed, IsWon, Probability FROM Opportunity WHERE IsWon = true"
    )
    assert opportunity["records"][0]["IsClosed"] is True
    events = sf.query_all(
        "SELECT Subject, WhoId, Who.Type, AccountId, StartDateTime, EndDateTime,"
        " DurationInMinutes FROM Event ORDER BY StartDateTime"
    )["records"]
    assert [(e["Subject"], e["Who"]["Type"]) for e in events] == [
        ("Intro", "Contact"),
        ("Demo", "Lead"),
    ]
    assert events[0]["AccountId"] == crm["accounts"][0]  # derived from the contact
    assert events[0]["StartDateTime"] == "2026-03-02T09:00:00.000+0000"
    assert events[0]["EndDateTime"] == "2026-03-02T09:30:00.000+0000"
    # Events older than a year are archived: only queryAll returns them (docs/salesforce.md §2).
    archived = sf.query_all("SELECT Subject, IsArchived FROM Event", include_deleted=True)
    assert {e["Subject"]: e["IsArchived"] for e in archived["records"]} == {
        "Intro": False,
        "Demo": False,
        "Ancient": True,
    }


def test_soql_quotes_escapes_and_injection_attempts(sf, crm):
    def names(soql: str) -> list[str]:
        return [r["LastName"] for r in sf.query_all(soql)["records"]]

    assert names(format_soql("SELECT LastName FROM Lead WHERE LastName = {}", "O'Brien")) == [
        "O'Brien"
    ]
    assert names("SELECT LastName FROM Lead WHERE LastName = 'O\\'Brien'") == ["O'Brien"]
    injection = "x' OR LastName != null OR LastName = 'y"
    assert names(format_soql("SELECT LastName FROM Lead WHERE LastName = {}", injection)) == []
    assert names(format_soql("SELECT LastName FROM Lead WHERE LastName = {}", 'a\\b\n"')) == []
    assert names(format_soql("SELECT LastName FROM Lead WHERE LastName LIKE '{:like}%'", "O'B"))
    # Unescaped or otherwise broken statements are refused, never half-parsed.
    for soql in [
        "SELECT LastName FROM Lead WHERE LastName = 'O'Brien'",
        "SELECT LastName FROM Lead WHERE LastName = 'unterminated",
        "SELECT LastName FROM Lead WHERE LastName = 'bad \\q escape'",
        "SELECT LastName FROM Lead WHERE Email = 'a' AND LastName = 'b' OR Company = 'c'",
        "SELECT Company, COUNT(Id) FROM Lead GROUP BY Company",
        "SELECT Id FROM Contact WHERE AccountId IN (SELECT Id FROM Account)",
        "SELECT FIELDS(ALL) FROM Lead LIMIT 10",
        "SELECT Id FROM Lead; DELETE FROM Lead",
        "SELECT Id FROM Lead WHERE",
        "DELETE FROM Lead",
    ]:
        with pytest.raises(SalesforceMalformedRequest) as bad:
            sf.query(soql)
        assert bad.value.content[0]["errorCode"] == "MALFORMED_QUERY", soql
        assert "ERROR at Row:1:Column:" in bad.value.content[0]["message"], soql
    for soql, code in [
        ("SELECT Nope FROM Lead", "INVALID_FIELD"),
        ("SELECT Id FROM Leads", "INVALID_TYPE"),
        ("SELECT Id FROM Lead WHERE CreatedDate > '2026-01-01T00:00:00Z'", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE CreatedDate > 2026-01-01", "INVALID_FIELD"),
        ("SELECT Id FROM Lead WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR"),
        ("SELECT Id, Nope.Name FROM Lead", "INVALID_FIELD"),
    ]:
        with pytest.raises(SalesforceMalformedRequest) as bad:
            sf.query(soql)
        assert bad.value.content[0]["errorCode"] == code, soql
    assert sf.query("select lastname from LEAD where lastname = 'Bo'")["records"][0]["LastName"]


# ----------------------------------------------------------- single records (docs/salesforce.md §3)


def test_sobject_create_get_update_upsert_delete(sf):
    created = sf.Lead.create({"LastName": "Ng", "Company": "Acme", "Email": "ng@acme.io"})
    assert created["success"] is True and created["errors"] == []
    lead_id = created["id"]
    assert len(lead_id) == 18 and lead_id.startswith("00Q")
    assert normalize_id(lead_id[:15]) == lead_id == normalize_id(lead_id.lower())
    record = sf.Lead.get(lead_id)
    assert record["Email"] == "ng@acme.io" and record["IsConverted"] is False
    assert record["Status"] == "Open - Not Contacted" and record["Name"] == "Ng"
    assert sf.Lead.update(lead_id, {"PQL_Key__c": "u_1", "PQL_Score__c": 87.5}) == 204
    assert sf.Lead.get_by_custom_id("PQL_Key__c", "u_1")["PQL_Score__c"] == 87.5
    updated = sf.Lead.upsert("PQL_Key__c/u_1", {"PQL_Flag__c": True}, raw_response=True)
    assert updated.status_code == 200 and updated.json()["created"] is False
    inserted = sf.Lead.upsert(
        "PQL_Key__c/u_2", {"LastName": "Oh", "Company": "Beta"}, raw_response=True
    )
    assert inserted.status_code == 201 and inserted.json()["created"] is True
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.Lead.create({"LastName": "Nope", "Email": "not-an-email"})
    assert {e["errorCode"] for e in bad.value.content} == {
        "INVALID_EMAIL_ADDRESS",
        "REQUIRED_FIELD_MISSING",
    }
    assert sf.Lead.delete(lead_id) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Lead.get(lead_id)
    assert sf.query_all("SELECT Id FROM Lead", include_deleted=True)["totalSize"] == 2
    assert sf.query_all("SELECT Id FROM Lead")["totalSize"] == 1


# -------------------------------------------------------------- collections (docs/salesforce.md §4)


def test_collections_report_per_record_errors_in_request_order(sf):
    results = collection(
        sf,
        "POST",
        [
            lead(Email="ok@acme.io"),
            lead(Email="not-an-email"),
            lead(Foo__c="x"),
            {"attributes": {"type": "Lead"}, "LastName": "NoCompany"},
            lead(IsConverted=True),
            {"attributes": {"type": "Contact"}, "LastName": "Mixed", "Email": "m@acme.io"},
        ],
    )
    assert [r["success"] for r in results] == [True, False, False, False, False, True]
    assert codes(results[1]) == ["INVALID_EMAIL_ADDRESS"]
    assert results[1]["errors"][0] == {
        "statusCode": "INVALID_EMAIL_ADDRESS",
        "message": "Email: invalid email address: not-an-email",
        "fields": ["Email"],
    }
    assert codes(results[2]) == ["INVALID_FIELD"]
    assert results[3]["errors"][0]["fields"] == ["Company"]
    assert codes(results[4]) == ["INVALID_FIELD_FOR_INSERT_UPDATE"]
    assert "id" not in results[1] and results[5]["id"].startswith("003")
    ok_id = results[0]["id"]
    updates = collection(
        sf,
        "PATCH",
        [
            {"attributes": {"type": "Lead"}, "id": ok_id, "PQL_Score__c": 42},
            {"attributes": {"type": "Lead"}, "id": MISSING_LEAD, "PQL_Score__c": 1},
            {"attributes": {"type": "Lead"}, "id": ok_id, "Email": "broken"},
        ],
    )
    assert updates[0] == {"id": ok_id, "success": True, "errors": []}
    assert codes(updates[1]) == ["INVALID_CROSS_REFERENCE_KEY"]
    assert updates[2]["id"] == ok_id and codes(updates[2]) == ["INVALID_EMAIL_ADDRESS"]
    upserts = collection(
        sf,
        "PATCH",
        [
            lead(PQL_Key__c="u_1", PQL_Score__c=10),
            lead(PQL_Key__c="u_2", Email="bad"),
            {"attributes": {"type": "Lead"}, "PQL_Key__c": "u_3", "LastName": "A", "Company": "B"},
            lead(),
        ],
        path="/Lead/PQL_Key__c",
    )
    assert [(r["success"], r.get("created")) for r in upserts] == [
        (True, True),
        (False, False),
        (True, True),
        (False, False),
    ]
    assert codes(upserts[3]) == ["MISSING_ARGUMENT"]
    again = collection(sf, "PATCH", [lead(PQL_Key__c="U_1", PQL_Score__c=11)], "/Lead/PQL_Key__c")
    assert again[0]["created"] is False and again[0]["id"] == upserts[0]["id"]
    twice = collection(
        sf, "PATCH", [lead(PQL_Key__c="d"), lead(PQL_Key__c="d")], path="/Lead/PQL_Key__c"
    )
    assert [codes(r) for r in twice] == [["DUPLICATE_EXTERNAL_ID"]] * 2
    retrieved = sf.restful(
        "composite/sobjects/Lead",
        params={"ids": f"{ok_id},{MISSING_LEAD}", "fields": "Id,PQL_Score__c"},
    )
    assert retrieved[0]["PQL_Score__c"] == 42.0 and retrieved[1] is None


def test_collections_all_or_none_rolls_back_and_limits_to_200(sf):
    results = collection(sf, "POST", [lead(Email="a@acme.io"), lead(Email="bad")], all_or_none=True)
    assert codes(results[0]) == ["ALL_OR_NONE_OPERATION_ROLLED_BACK"]
    assert codes(results[1]) == ["INVALID_EMAIL_ADDRESS"]
    assert sf.query("SELECT COUNT() FROM Lead")["totalSize"] == 0
    with pytest.raises(SalesforceMalformedRequest) as too_many:
        collection(sf, "POST", [lead() for _ in range(201)])
    assert too_many.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert len(collection(sf, "POST", [lead() for _ in range(200)])) == 200


def test_converted_leads_cannot_be_updated(sandbox, sf):
    store = SalesforceStore(sandbox)
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact] = store.create("Contact", [{"LastName": "Ng", "AccountId": account}])
    [converted, open_lead] = store.create("Lead", leads(2))
    store.convert_lead(converted, account, contact)
    [result, fine] = collection(
        sf,
        "PATCH",
        [
            {"attributes": {"type": "Lead"}, "id": converted, "PQL_Score__c": 5},
            {"attributes": {"type": "Lead"}, "id": open_lead, "PQL_Score__c": 5},
        ],
    )
    assert result == {
        "id": converted,
        "success": False,
        "errors": [
            {
                "statusCode": "CANNOT_UPDATE_CONVERTED_LEAD",
                "message": "cannot reference converted lead",
                "fields": [],
            }
        ],
    }
    assert fine["success"] is True
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.Lead.update(converted, {"PQL_Score__c": 5})
    assert bad.value.content[0]["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    [job] = sf.bulk2.Lead.update(records=[{"Id": converted, "PQL_Score__c": "5"}], wait=0)
    assert job["numberRecordsFailed"] == 1
    [row] = csv_rows(sf.bulk2.Lead.get_failed_records(job["job_id"]))
    assert row["sf__Id"] == converted
    assert row["sf__Error"] == "CANNOT_UPDATE_CONVERTED_LEAD:cannot reference converted lead:--"
    assert sf.Contact.update(contact, {"PQL_Score__c": 5}) == 204  # write to the Contact instead


def test_tasks_link_who_and_what_and_refuse_an_inactive_owner(sandbox, sf):
    store = SalesforceStore(sandbox)
    [rep, gone] = store.create(
        "User",
        [
            {"Username": "kim@acme.test", "LastName": "Kim", "Email": "kim@acme.test"},
            {"Username": "old@acme.test", "LastName": "Old", "Email": "old@acme.test",
             "IsActive": False},
        ],
    )  # fmt: skip
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact] = store.create("Contact", [{"LastName": "Ng", "AccountId": account}])
    [open_lead] = store.create("Lead", [{**leads(1)[0], "OwnerId": rep}])

    def task(**values) -> dict:
        return {"attributes": {"type": "Task"}, "Subject": "Follow up", "Priority": "High",
                "ActivityDate": "2026-11-03", **values}  # fmt: skip

    results = collection(
        sf,
        "POST",
        [
            task(WhoId=contact, WhatId=account, OwnerId=rep),
            task(WhoId=open_lead, OwnerId=rep),
            task(WhoId=open_lead, OwnerId=gone),
        ],
    )
    assert [r["success"] for r in results] == [True, True, False]
    assert results[2]["errors"] == [
        {
            "statusCode": "INACTIVE_OWNER_OR_USER",
            "message": f"operation performed with inactive user [{gone}] as owner of task",
            "fields": [],
        }
    ]
    [on_contact] = sf.query(
        f"SELECT WhoId, What.Type, AccountId, OwnerId, Status, IsClosed, ActivityDate, "
        f"TaskSubtype FROM Task WHERE Id = '{results[0]['id']}'"
    )["records"]
    assert (on_contact["WhoId"], on_contact["What"]["Type"], on_contact["AccountId"]) == (
        contact,
        "Account",
        account,
    )  # AccountId is derived from the Contact
    assert (on_contact["OwnerId"], on_contact["Status"], on_contact["IsClosed"]) == (
        rep,
        "Not Started",
        False,
    )
    assert (on_contact["ActivityDate"], on_contact["TaskSubtype"]) == ("2026-11-03", "Task")
    store.update("User", gone, {"IsActive": True})  # reactivated: the same task now saves
    [retried] = collection(sf, "POST", [task(WhoId=open_lead, OwnerId=gone)])
    assert retried["success"] is True
    # Only an owner given in the write is checked: records already held by a departed rep
    # stay writable (the PQL sync never sets OwnerId).
    store.update("User", rep, {"IsActive": False})
    [edit] = collection(
        sf, "PATCH", [{"attributes": {"type": "Lead"}, "id": open_lead, "PQL_Score__c": 5}]
    )
    assert edit["success"] is True


def test_lock_faults_fail_some_records_until_retried(sandbox, sf):
    sandbox.queue_fault("salesforce_lock", 400, count=2)
    results = collection(sf, "POST", [lead(LastName=f"L{i}") for i in range(4)])
    assert [r["success"] for r in results] == [False, False, True, True]
    assert codes(results[0]) == ["UNABLE_TO_LOCK_ROW"]
    assert "unable to obtain exclusive access" in results[0]["errors"][0]["message"]
    retried = collection(sf, "POST", [lead(LastName="L0"), lead(LastName="L1")])
    assert all(r["success"] for r in retried)
    sandbox.settings["salesforce_lock_rate"] = 1.0
    ids = [r["id"] for r in results[2:]]
    updates = collection(
        sf, "PATCH", [{"attributes": {"type": "Lead"}, "id": i, "PQL_Score__c": 1} for i in ids]
    )
    assert [codes(r) for r in updates] == [["UNABLE_TO_LOCK_ROW"]] * 2
    assert updates[0]["errors"][0]["message"].endswith(ids[0])
    [job] = sf.bulk2.Lead.insert(records=leads(3), wait=0)
    assert job["numberRecordsFailed"] == 3
    errors = [r["sf__Error"] for r in csv_rows(sf.bulk2.Lead.get_failed_records(job["job_id"]))]
    assert all(e.startswith("UNABLE_TO_LOCK_ROW:") for e in errors)


# ------------------------------------------------------------- Bulk API 2.0 (docs/salesforce.md §5)


def test_bulk2_ingest_job_end_to_end_with_failed_results(sandbox, sf):
    SalesforceStore(sandbox).create("Lead", [{**leads(1)[0], "PQL_Key__c": "u_0"}])
    records = [
        {"PQL_Key__c": "u_0", "LastName": "Updated", "Company": "", "Email": ""},
        {"PQL_Key__c": "u_1", "LastName": "New", "Company": "Beta", "Email": "new@beta.dev"},
        {"PQL_Key__c": "u_2", "LastName": "Bad", "Company": "Beta", "Email": "nope"},
        {"PQL_Key__c": "u_3", "LastName": "NoCompany", "Company": "", "Email": ""},
    ]
    [job] = sf.bulk2.Lead.upsert(records=records, external_id_field="PQL_Key__c", wait=0)
    assert job["numberRecordsProcessed"] == 4 and job["numberRecordsFailed"] == 2
    assert job["numberRecordsTotal"] == 4
    info = sf.restful(f"jobs/ingest/{job['job_id']}")
    assert info["state"] == "JobComplete" and info["jobType"] == "V2Ingest"
    assert info["object"] == "Lead" and info["operation"] == "upsert"
    assert info["externalIdFieldName"] == "PQL_Key__c" and info["id"].startswith("750")
    success_text = sf.bulk2.Lead.get_successful_records(job["job_id"])
    assert success_text.splitlines()[0].startswith('"sf__Id","sf__Created",')
    success = {r["PQL_Key__c"]: r for r in csv_rows(success_text)}
    assert success["u_0"]["sf__Created"] == "false" and success["u_1"]["sf__Created"] == "true"
    failed = {r["PQL_Key__c"]: r for r in csv_rows(sf.bulk2.Lead.get_failed_records(job["job_id"]))}
    assert failed["u_2"]["sf__Error"] == (
        "INVALID_EMAIL_ADDRESS:Email: invalid email address: nope:Email --"
    )
    assert failed["u_3"]["sf__Error"] == (
        "REQUIRED_FIELD_MISSING:Required fields are missing: [Company]:Company --"
    )
    assert failed["u_2"]["sf__Id"] == ""
    everything = sf.bulk2.Lead.get_all_ingest_records(job["job_id"])
    assert len(everything["successfulRecords"]) == 2 and len(everything["failedRecords"]) == 2
    assert everything["unprocessedRecords"] == []
    # An empty cell left Company/Email as they were; #N/A would have cleared them
    # (docs/salesforce.md §5).
    [kept] = sf.query("SELECT LastName, Company, Email FROM Lead WHERE PQL_Key__c = 'u_0'")[
        "records"
    ]
    assert (kept["LastName"], kept["Company"], kept["Email"]) == (
        "Updated",
        "Acme",
        "lead0000@acme.io",
    )
    [job] = sf.bulk2.Lead.update(
        records=[{"Id": success["u_1"]["sf__Id"], "Email": "#N/A"}], wait=0
    )
    assert job["numberRecordsFailed"] == 0
    assert sf.Lead.get(success["u_1"]["sf__Id"])["Email"] is None


def test_bulk2_job_states_delay_abort_and_failed_jobs(sandbox, sf, http):
    sandbox.settings["salesforce_bulk_delay_s"] = 0.5
    base = f"{sandbox.salesforce_url}/services/data/v59.0/jobs/ingest"
    headers = {"Authorization": f"Bearer {sf.session_id}"}
    created = http.post(
        base,
        json={"object": "Lead", "operation": "insert", "contentType": "CSV", "lineEnding": "LF"},
        headers=headers,
    ).json()
    assert created["state"] == "Open" and created["contentType"] == "CSV"
    upload = http.put(
        f"{base}/{created['id']}/batches",
        data="LastName,Company\nA,Acme\nB,Acme\n",
        headers=headers | {"Content-Type": "text/csv"},
    )
    assert upload.status_code == 201 and upload.content == b""
    closed = http.patch(
        f"{base}/{created['id']}", json={"state": "UploadComplete"}, headers=headers
    )
    assert closed.json()["state"] == "UploadComplete"
    assert http.get(f"{base}/{created['id']}", headers=headers).json()["state"] == "InProgress"
    time.sleep(0.6)
    done = http.get(f"{base}/{created['id']}", headers=headers).json()
    assert (done["state"], done["numberRecordsProcessed"], done["numberRecordsFailed"]) == (
        "JobComplete",
        2,
        0,
    )
    # simple-salesforce polls until JobComplete (its first poll waits `wait` seconds).
    [job] = sf.bulk2.Lead.insert(records=leads(2), wait=0.2)
    assert job["numberRecordsProcessed"] == 2
    # Aborted before completion: every record comes back as unprocessed.
    sandbox.settings["salesforce_bulk_delay_s"] = 60
    job_id = sf.bulk2.Lead._client.create_job("insert")["id"]
    sf.bulk2.Lead._client.upload_job_data(job_id, "LastName,Company\nX,Y\n")
    sf.bulk2.Lead._client.close_job(job_id)
    assert sf.bulk2.Lead._client.abort_job(job_id, False)["state"] == "Aborted"
    assert csv_rows(sf.bulk2.Lead.get_unprocessed_records(job_id)) == [
        {"LastName": "X", "Company": "Y"}
    ]
    sandbox.settings["salesforce_bulk_delay_s"] = 0
    with pytest.raises(SalesforceOperationError, match="InvalidBatch : Field name not found"):
        sf.bulk2.Lead.insert(records=[{"LastName": "A", "Company": "B", "Nope__c": "x"}], wait=0)
    with pytest.raises(SalesforceMalformedRequest):
        sf.bulk2.Lead.upsert(records=leads(1), external_id_field="Email", wait=0)
    listed = sf.restful("jobs/ingest")
    assert listed["done"] is True and len(listed["records"]) == 4


def test_bulk2_query_pages_with_locator(sandbox, sf, crm):
    SalesforceStore(sandbox).create("Lead", leads(5))
    pages = list(
        sf.bulk2.Lead.query(
            "SELECT Id, Email, CreatedDate, IsConverted FROM Lead ORDER BY Email",
            max_records=4,
            wait=0,
        )
    )
    assert len(pages) == 3
    rows = [r for page in pages for r in csv_rows(page)]
    assert len(rows) == 9 and set(rows[0]) == {"Id", "Email", "CreatedDate", "IsConverted"}
    # Bulk CSV datetimes end in Z (docs/salesforce.md §5).
    assert rows[0]["CreatedDate"].endswith(".000Z")
    assert [r["Email"] for r in rows].count("") == 1  # nulls are empty cells
    assert {r["IsConverted"] for r in rows} == {"true", "false"}
    [page] = list(sf.bulk2.Event.query_all("SELECT Subject, Who.Type FROM Event", wait=0))
    assert {r["Subject"] for r in csv_rows(page)} == {"Intro", "Demo", "Ancient"}


# ---------------------------------------------------- limits and faults (docs/salesforce.md §6, §7)


def test_queued_faults_answer_in_salesforce_shapes(sandbox, sf, http):
    sandbox.queue_fault("salesforce", 503)
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.query("SELECT Id FROM Lead")
    assert unavailable.value.status == 503
    assert unavailable.value.content[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert sf.query("SELECT Id FROM Lead")["done"] is True  # one fault, then served again
    sandbox.queue_fault("salesforce", 429)  # Salesforce has no 429: the limit error is a 403
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.Lead.describe()
    assert refused.value.content == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    sandbox.queue_fault("salesforce", 500)
    with pytest.raises(SalesforceGeneralError) as crashed:
        sf.restful("limits")
    assert crashed.value.content[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    sandbox.queue_fault("salesforce", 502)
    with pytest.raises(SalesforceGeneralError) as gateway:
        sf.restful("limits")
    assert gateway.value.status == 502 and "Gateway" in gateway.value.content
    sandbox.queue_fault("salesforce_oauth", 503)
    assert get_token(sandbox, http).status_code == 503
    assert get_token(sandbox, http).status_code == 200
    assert sandbox.counters["salesforce.503"] == 1


def test_daily_limit_header_limits_endpoint_and_refusals(sandbox, sf):
    sf.query("SELECT Id FROM Lead")
    assert sf.api_usage["api-usage"].total == 100_000
    used = sf.api_usage["api-usage"].used
    limits = sf.restful("limits")
    assert limits["DailyApiRequests"] == {"Max": 100_000, "Remaining": 100_000 - used - 1}
    assert {"DailyBulkApiBatches", "DailyBulkV2QueryJobs"} <= set(limits)
    sandbox.settings["salesforce_daily_api_requests"] = 2
    sf.query("SELECT Id FROM Lead")
    sf.query("SELECT Id FROM Lead")
    assert sf.api_usage["api-usage"] == type(sf.api_usage["api-usage"])(2, 2)
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Lead")
    assert refused.value.status == 403
    assert refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert refused.value.content[0]["message"] == "TotalRequests Limit exceeded."
    sandbox.settings["salesforce_daily_api_requests"] = 100_000
    sandbox.settings["salesforce_concurrent_requests"] = 0
    with pytest.raises(SalesforceRefusedRequest) as busy:
        sf.query("SELECT Id FROM Lead")
    assert busy.value.content[0]["message"] == "ConcurrentPerOrgLongTxn Limit exceeded."


def test_counters_by_endpoint_and_unknown_resources(sandbox, sf):
    sf.Lead.describe()
    collection(sf, "POST", [lead()])
    sf.query_all("SELECT Id FROM Lead")
    counters = sandbox.counters
    assert counters["salesforce.describe"] == 1
    assert counters["salesforce.collections_create"] == 1
    assert counters["salesforce.query"] == 1
    with pytest.raises(SalesforceResourceNotFound):
        sf.restful("no/such/resource")
    assert counters["salesforce.not_found"] == 1
    with pytest.raises(SalesforceResourceNotFound):
        Salesforce(
            instance_url=sf.base_url.split("/services")[0],
            session_id=sf.session_id,
            session=sf.session,
            version="10.0",
        ).query("SELECT Id FROM Lead")
    versions = sf.session.get(f"{sandbox.salesforce_url}/services/data/").json()
    assert {"version": "59.0", "url": "/services/data/v59.0", "label": "v59.0"} in versions


# ---------------------------------------------------------------- Airflow's SalesforceHook


def test_airflow_salesforce_hook_reads_the_env_connection(sandbox, http, monkeypatch):
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    for name, value in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(name, value)
    conn = json.loads(connection_env(sandbox, sandbox.base_url)["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
    assert conn["conn_type"] == "salesforce"
    assert conn["extra"]["instance_url"] == sandbox.salesforce_url
    SalesforceStore(sandbox).create("Account", [{"Name": "Acme"}, {"Name": "Beta"}])
    session = requests.Session()
    session.trust_env = False
    hook = SalesforceHook(session=session)  # logs in itself (OAuth password flow via `domain`)
    session.verify = hook.get_connection("salesforce_default").extra_dejson["ca_bundle"]
    result = hook.make_query("SELECT Id, Name FROM Account ORDER BY Name")
    assert [r["Name"] for r in result["records"]] == ["Acme", "Beta"]
    assert "PQL_Key__c" in hook.get_available_fields("Lead")
    # The direct-session way (docs/salesforce.md §9): a token fetched by the caller plus
    # instance_url.
    token = get_token(sandbox, http).json()["access_token"]
    direct = SalesforceHook(session_id=token, session=http)
    assert direct.get_conn().session_id == token
    assert direct.describe_object("Opportunity")["name"] == "Opportunity"
    # (query_all counts the records it got, so COUNT() goes through query().)
    assert direct.get_conn().query("SELECT COUNT() FROM Account")["totalSize"] == 2


# ---------------------------------------------------------------- seeding


def test_seed_builds_leads_conversions_meetings_and_opportunities(sandbox, sf):
    spec = world.WorldSpec(seed=7, users=800, accounts=80)
    accounts = world.accounts(spec)
    truth = []
    for user in world.users(spec, accounts):
        o = world.outcome(spec, user)
        truth.append(
            {
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "account_domain": user.account.domain,
                "free_email": user.free_email,
                "signup_at": user.signup_at,
                "meeting_at": o.meeting_at,
                "deal_created_at": o.deal_created_at,
                "won_at": o.won_at,
                "amount": o.amount,
            }
        )
    counts = salesforce.seed(sandbox, spec, accounts, truth)
    end = spec.end

    def happened(t) -> bool:
        return t is not None and t < end

    met = [t for t in truth if happened(t["meeting_at"])]
    dealt = [t for t in met if happened(t["deal_created_at"])]
    won = [t for t in dealt if happened(t["won_at"])]
    assert counts["accounts"] == 80 and counts["events"] == len(met) > 0
    assert counts["opportunities"] == counts["converted_leads"] == len(dealt) > 0
    assert counts["won_opportunities"] == len(won)
    assert len(truth) > counts["leads"] >= len(met)
    assert sf.query("SELECT COUNT() FROM Lead")["totalSize"] == counts["leads"]
    converted = sf.query_all(
        "SELECT Email, ConvertedContactId, ConvertedContact.Email, ConvertedOpportunityId,"
        " ConvertedDate FROM Lead WHERE IsConverted = true"
    )["records"]
    assert sorted(r["Email"] for r in converted) == sorted(t["email"] for t in dealt)
    assert all(r["ConvertedContact"]["Email"] == r["Email"] for r in converted)
    roles = sf.query_all(
        format_soql(
            "SELECT Contact.Email, Opportunity.IsWon, Opportunity.Amount FROM"
            " OpportunityContactRole WHERE ContactId IN {}",
            [r["ConvertedContactId"] for r in converted],
        )
    )["records"]
    assert sorted(r["Contact"]["Email"] for r in roles if r["Opportunity"]["IsWon"]) == sorted(
        t["email"] for t in won
    )
    events = sf.query_all("SELECT Who.Type, StartDateTime FROM Event")["records"]
    on_contacts = [e for e in events if e["Who"]["Type"] == "Contact"]
    assert len(on_contacts) == len(dealt) and len(events) == len(met)
    first = min(met, key=lambda t: t["meeting_at"])["meeting_at"]
    assert min(e["StartDateTime"] for e in events) == first.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    signups = sf.query_all("SELECT CreatedDate FROM Lead WHERE CreatedDate < 2000-01-01T00:00:00Z")[
        "records"
    ]
    assert signups == []  # CreatedDate is the sign-up time, not the seeding time
