"""Lead conversion in the sandbox Salesforce emulator: the SOAP partner API's convertLead, called
as an integration would (sandbox.salesforce.convert_lead with a simple-salesforce client's
session), and checked through simple-salesforce's REST calls."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)

from sandbox.salesforce import SalesforceStore, convert_lead, convert_leads, credentials
from sandbox.salesforce_store import ORG_ID, SalesforceError, make_id

MISSING_LEAD = make_id("00Q", 99_999)  # well-formed, never allocated
PQL_VALUES = {
    "PQL_Score__c": 87.5,
    "PQL_Flag__c": True,
    "PQL_Qualified_At__c": "2026-10-01T09:30:00.000+0000",
    "PQL_Reasons__c": "invited 3 teammates; connected Slack",
    "PQL_Model_Version__c": "weighted-7",
}
PQL_MAPPING = {name: name for name in PQL_VALUES}


@pytest.fixture
def store(sandbox) -> SalesforceStore:
    return SalesforceStore(sandbox)


def make_lead(store: SalesforceStore, **values) -> str:
    lead = {
        "FirstName": "Ana",
        "LastName": "Ng",
        "Company": "Acme",
        "Email": "ana@acme.io",
        "Phone": "+1 555 0100",
        "Title": "CTO",
        "LeadSource": "Product Sign-up",
        "Status": "Working - Contacted",
    }
    [lead_id] = store.create("Lead", [lead | values])
    return lead_id


def one(sf: Salesforce, soql: str, *args) -> dict:
    [record] = sf.query(format_soql(soql, *args))["records"]
    return record


def count(sf: Salesforce, type_name: str) -> int:
    return sf.query(f"SELECT COUNT() FROM {type_name}")["totalSize"]


def moment(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def just_before() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # stamps keep milliseconds


def codes(result: dict) -> list[str]:
    return [e["statusCode"] for e in result["errors"]]


def quarter_end(day: date) -> date:
    month = (day.month - 1) // 3 * 3 + 3
    return date(day.year + month // 12, month % 12 + 1, 1) - timedelta(days=1)


# ---------------------------------------------------------------- conversion


def test_conversion_creates_account_contact_and_opportunity(sandbox, sf, store):
    lead_id = make_lead(store)
    before = just_before()
    result = convert_lead(sf, lead_id)
    assert result["success"] is True and result["errors"] == []
    ids = [result[k] for k in ("leadId", "accountId", "contactId", "opportunityId")]
    assert [i[:3] for i in ids] == ["00Q", "001", "003", "006"]
    assert all(len(i) == 18 for i in ids) and result["leadId"] == lead_id

    lead = one(
        sf,
        "SELECT IsConverted, Status, ConvertedDate, ConvertedAccountId, ConvertedContactId, "
        "ConvertedOpportunityId, OwnerId, SystemModstamp FROM Lead WHERE Id = {}",
        lead_id,
    )
    assert lead["IsConverted"] is True and lead["Status"] == "Closed - Converted"
    today = {before.date().isoformat(), datetime.now(UTC).date().isoformat()}  # UTC, a date
    assert lead["ConvertedDate"] in today
    assert lead["ConvertedAccountId"] == result["accountId"]
    assert lead["ConvertedContactId"] == result["contactId"]
    assert lead["ConvertedOpportunityId"] == result["opportunityId"]
    assert moment(lead["SystemModstamp"]) >= before

    contact = one(
        sf,
        "SELECT AccountId, Account.Name, Name, FirstName, LastName, Email, Phone, Title, "
        "LeadSource, OwnerId, CreatedDate, SystemModstamp FROM Contact WHERE Id = {}",
        result["contactId"],
    )
    assert contact["AccountId"] == result["accountId"] and contact["Account"]["Name"] == "Acme"
    assert (contact["Name"], contact["Email"]) == ("Ana Ng", "ana@acme.io")
    assert (contact["Phone"], contact["Title"]) == ("+1 555 0100", "CTO")
    assert contact["LeadSource"] == "Product Sign-up" and contact["OwnerId"] == lead["OwnerId"]
    # The product looks for records created or modified since its last run.
    assert moment(contact["SystemModstamp"]) >= before
    assert moment(contact["CreatedDate"]) >= before
    since = sf.query(format_soql("SELECT Id FROM Contact WHERE SystemModstamp >= {}", before))
    assert [r["Id"] for r in since["records"]] == [result["contactId"]]

    opportunity = one(
        sf,
        "SELECT Name, AccountId, StageName, IsClosed, IsWon, CloseDate, LeadSource, OwnerId "
        "FROM Opportunity WHERE Id = {}",
        result["opportunityId"],
    )
    assert opportunity["Name"] == "Acme-" and opportunity["AccountId"] == result["accountId"]
    assert opportunity["StageName"] == "Prospecting"  # the first open stage
    assert (opportunity["IsClosed"], opportunity["IsWon"]) == (False, False)
    assert (
        opportunity["CloseDate"]
        == quarter_end(date.fromisoformat(lead["ConvertedDate"])).isoformat()
    )
    [role] = sf.query(
        format_soql(
            "SELECT ContactId, IsPrimary, Role FROM OpportunityContactRole "
            "WHERE OpportunityId = {}",
            result["opportunityId"],
        )
    )["records"]
    assert (role["ContactId"], role["IsPrimary"], role["Role"]) == (
        result["contactId"],
        True,
        None,
    )
    assert [count(sf, t) for t in ("Account", "Contact", "Opportunity")] == [1, 1, 1]
    assert sandbox.counters["salesforce.convertLead"] == 1


def test_conversion_into_an_existing_account_and_contact_fills_only_blanks(sf, store):
    [account] = store.create("Account", [{"Name": "Acme Corp", "Website": "acme.io"}])
    [contact] = store.create(
        "Contact",
        [{"LastName": "Ng", "Email": "ana.ng@acme.io", "LeadSource": "Web", "AccountId": account}],
    )
    lead_id = make_lead(store, Company="Acme Inc", Website="acme.com", Industry="Software")
    before = just_before()
    result = convert_lead(
        sf, lead_id, account_id=account, contact_id=contact, opportunity_name="Acme seats"
    )
    assert result["success"] is True
    assert (result["accountId"], result["contactId"]) == (account, contact)
    assert [count(sf, t) for t in ("Account", "Contact", "Opportunity")] == [1, 1, 1]
    merged = one(
        sf,
        "SELECT FirstName, LastName, Email, Phone, Title, LeadSource, SystemModstamp "
        "FROM Contact WHERE Id = {}",
        contact,
    )
    assert (merged["FirstName"], merged["LastName"]) == ("Ana", "Ng")  # FirstName was blank
    assert merged["Email"] == "ana.ng@acme.io"  # not overwritten
    assert (merged["Phone"], merged["Title"]) == ("+1 555 0100", "CTO")
    assert merged["LeadSource"] == "Web"  # overwriteLeadSource is false
    assert moment(merged["SystemModstamp"]) >= before  # a merged Contact is written too
    kept = one(sf, "SELECT Name, Website, Industry FROM Account WHERE Id = {}", account)
    assert (kept["Name"], kept["Website"], kept["Industry"]) == ("Acme Corp", "acme.io", "Software")
    deal = one(sf, "SELECT Name, AccountId FROM Opportunity WHERE Id = {}", result["opportunityId"])
    assert deal == {**deal, "Name": "Acme seats", "AccountId": account}
    lead = one(sf, "SELECT ConvertedAccountId, ConvertedContactId FROM Lead WHERE Id = {}", lead_id)
    assert (lead["ConvertedAccountId"], lead["ConvertedContactId"]) == (account, contact)

    # overwriteLeadSource: the Contact's LeadSource becomes the Lead's.
    second = make_lead(store, Email="ana@acme.io", LeadSource="Partner Referral")
    again = convert_lead(
        sf, second, account_id=account, contact_id=contact, overwrite_lead_source=True,
        create_opportunity=False,
    )  # fmt: skip
    assert again["success"] is True
    assert store.get(contact)["LeadSource"] == "Partner Referral"


def test_contact_without_an_account_given_attaches_to_its_own_account(sf, store):
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact] = store.create("Contact", [{"LastName": "Ng", "AccountId": account}])
    result = convert_lead(sf, make_lead(store), contact_id=contact, create_opportunity=False)
    assert (result["success"], result["accountId"], result["contactId"]) == (
        True,
        account,
        contact,
    )
    assert count(sf, "Account") == 1


def test_do_not_create_opportunity(sandbox, sf, store):
    lead_id = make_lead(store)
    result = convert_lead(sf, lead_id, create_opportunity=False)
    assert result["success"] is True and result["opportunityId"] is None
    lead = one(sf, "SELECT IsConverted, ConvertedOpportunityId FROM Lead WHERE Id = {}", lead_id)
    assert lead == {**lead, "IsConverted": True, "ConvertedOpportunityId": None}
    assert count(sf, "Opportunity") == count(sf, "OpportunityContactRole") == 0
    assert [count(sf, t) for t in ("Account", "Contact")] == [1, 1]


def test_response_is_a_partner_soap_envelope(sandbox, sf, store):
    lead_id, other = make_lead(store), make_lead(store, Email="bo@acme.io")
    envelope = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:urn="urn:partner.soap.sforce.com"><env:Header><urn:SessionHeader>'
        f"<urn:sessionId>{sf.session_id}</urn:sessionId></urn:SessionHeader></env:Header>"
        "<env:Body><urn:convertLead>"
        "<urn:leadConverts><urn:convertedStatus>Closed - Converted</urn:convertedStatus>"
        "<urn:doNotCreateOpportunity>true</urn:doNotCreateOpportunity>"
        f"<urn:leadId>{lead_id[:15]}</urn:leadId></urn:leadConverts>"
        "<urn:leadConverts><urn:convertedStatus>Open - Not Contacted</urn:convertedStatus>"
        f"<urn:leadId>{other}</urn:leadId></urn:leadConverts>"
        "</urn:convertLead></env:Body></env:Envelope>"
    )
    response = sf.session.post(
        f"https://{sf.sf_instance}/services/Soap/u/{sf.sf_version}",
        data=envelope,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "convertLead"},
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    text = response.text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope ')
    assert 'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"' in text
    assert 'xmlns="urn:partner.soap.sforce.com"' in text
    assert "<soapenv:Body><convertLeadResponse><result><accountId>001" in text
    lead = store.get(lead_id)  # a 15-character id is accepted; results carry 18
    good = (
        f"<result><accountId>{lead['ConvertedAccountId']}</accountId>"
        f"<contactId>{lead['ConvertedContactId']}</contactId><leadId>{lead_id}</leadId>"
        '<opportunityId xsi:nil="true"/><success>true</success></result>'
    )
    bad = (
        '<result><accountId xsi:nil="true"/><contactId xsi:nil="true"/><errors>'
        "<message>invalid convertedStatus: Open - Not Contacted</message>"
        f"<statusCode>INVALID_STATUS</statusCode></errors><leadId>{other}</leadId>"
        '<opportunityId xsi:nil="true"/><success>false</success></result>'
    )
    assert good + bad in text
    assert text.endswith("</convertLeadResponse></soapenv:Body></soapenv:Envelope>")
    # The login's serverUrl (the org id appended) takes the same calls.
    again = sf.session.post(
        f"https://{sf.sf_instance}/services/Soap/u/{sf.sf_version}/{ORG_ID[:15]}",
        data=envelope,
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": "convertLead"},
    )
    assert again.status_code == 200
    assert "<statusCode>CANNOT_UPDATE_CONVERTED_LEAD</statusCode>" in again.text


# ---------------------------------------------------------------- after conversion


def test_converted_lead_is_read_only(sf, store):
    lead_id = make_lead(store)
    assert convert_lead(sf, lead_id)["success"] is True
    [result] = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [{"attributes": {"type": "Lead"}, "id": lead_id, "PQL_Score__c": 5}],
        },
    )
    assert (result["success"], codes(result)) == (False, ["CANNOT_UPDATE_CONVERTED_LEAD"])
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.Lead.update(lead_id, {"Title": "CEO"})
    assert bad.value.content[0]["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    again = convert_lead(sf, lead_id)
    assert (again["success"], codes(again)) == (False, ["CANNOT_UPDATE_CONVERTED_LEAD"])
    assert store.get(lead_id)["Title"] == "CTO"


def test_events_and_tasks_move_to_the_contact(sf, store):
    lead_id, other, bare = make_lead(store), make_lead(store), make_lead(store)
    start = "2026-10-05T15:00:00.000+0000"
    event, other_event, task, bare_task = store.create("Event", [
        {"Subject": "Intro", "WhoId": lead_id, "StartDateTime": start, "DurationInMinutes": 30},
        {"Subject": "Demo", "WhoId": other, "StartDateTime": start, "DurationInMinutes": 30},
    ]) + store.create("Task", [
        {"Subject": "Follow up", "WhoId": lead_id, "Status": "Completed"},
        {"Subject": "Call", "WhoId": bare, "Status": "Not Started"},
    ])  # fmt: skip
    result = convert_lead(sf, lead_id)
    for activity in ("Event", "Task"):
        record_id = event if activity == "Event" else task
        moved = one(
            sf,
            f"SELECT WhoId, Who.Type, WhatId, AccountId FROM {activity} WHERE Id = {{}}",
            record_id,
        )
        assert (moved["WhoId"], moved["Who"]["Type"]) == (result["contactId"], "Contact")
        assert moved["WhatId"] == result["opportunityId"]  # Related To: the new Opportunity
        assert moved["AccountId"] == result["accountId"]
    assert one(sf, "SELECT WhoId FROM Event WHERE Id = {}", other_event)["WhoId"] == other
    # Without an Opportunity the activity only changes its Who.
    plain = convert_lead(sf, bare, create_opportunity=False)
    moved = one(sf, "SELECT WhoId, WhatId, AccountId FROM Task WHERE Id = {}", bare_task)
    assert moved == {**moved, "WhoId": plain["contactId"], "WhatId": None,
                     "AccountId": plain["accountId"]}  # fmt: skip


# ---------------------------------------------------------------- Lead -> Contact field mapping


def test_field_mapping_copies_mapped_fields_onto_a_new_contact(sandbox, sf, store):
    sandbox.settings["salesforce_lead_field_mapping"] = PQL_MAPPING
    lead_id = make_lead(store, **PQL_VALUES)
    result = convert_lead(sf, lead_id)
    assert result["success"] is True
    contact = one(sf, f"SELECT {', '.join(PQL_VALUES)} FROM Contact WHERE Id = {{}}",
                  result["contactId"])  # fmt: skip
    assert {k: contact[k] for k in PQL_VALUES} == PQL_VALUES


def test_field_mapping_is_empty_by_default(sf, store):
    lead_id = make_lead(store, **PQL_VALUES)
    result = convert_lead(sf, lead_id)
    contact = one(sf, f"SELECT {', '.join(PQL_VALUES)} FROM Contact WHERE Id = {{}}",
                  result["contactId"])  # fmt: skip
    assert {k: contact[k] for k in PQL_VALUES} == {
        "PQL_Score__c": None,
        "PQL_Flag__c": False,  # a checkbox is false, never null
        "PQL_Qualified_At__c": None,
        "PQL_Reasons__c": None,
        "PQL_Model_Version__c": None,
    }
    lead = one(sf, "SELECT PQL_Score__c FROM Lead WHERE Id = {}", lead_id)
    assert lead["PQL_Score__c"] == 87.5  # still on the (now read-only) Lead


def test_field_mapping_onto_an_existing_contact_fills_only_blanks(sandbox, sf, store):
    sandbox.settings["salesforce_lead_field_mapping"] = PQL_MAPPING
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact] = store.create("Contact", [{
        "LastName": "Ng", "AccountId": account, "PQL_Score__c": 40,
        "PQL_Model_Version__c": "weighted-6",
    }])  # fmt: skip
    result = convert_lead(sf, make_lead(store, **PQL_VALUES), account_id=account,
                          contact_id=contact)  # fmt: skip
    assert result["success"] is True
    merged = store.get(contact)
    assert merged["PQL_Score__c"] == 40 and merged["PQL_Model_Version__c"] == "weighted-6"
    assert merged["PQL_Reasons__c"] == PQL_VALUES["PQL_Reasons__c"]
    assert merged["PQL_Qualified_At__c"] == PQL_VALUES["PQL_Qualified_At__c"]


def test_a_bad_mapping_fails_the_lead_and_rolls_back_what_it_made(sandbox, sf, store):
    # Text into a number field: the Account is made before the Contact fails; both are undone.
    sandbox.settings["salesforce_lead_field_mapping"] = {"PQL_Reasons__c": "PQL_Score__c"}
    lead_id = make_lead(store, PQL_Reasons__c="many invites")
    result = convert_lead(sf, lead_id)
    assert (result["success"], codes(result)) == (False, ["INVALID_TYPE_ON_FIELD_IN_RECORD"])
    assert result["accountId"] is None and result["contactId"] is None
    assert [count(sf, t) for t in ("Account", "Contact", "Opportunity")] == [0, 0, 0]
    assert store.get(lead_id)["IsConverted"] is False
    sandbox.settings["salesforce_lead_field_mapping"] = {"PQL_Nope__c": "PQL_Score__c"}
    assert codes(convert_lead(sf, lead_id)) == ["INVALID_FIELD"]


# ---------------------------------------------------------------- per-lead errors


def test_per_lead_errors_change_nothing(sf, store):
    [account, elsewhere] = store.create("Account", [{"Name": "Acme"}, {"Name": "Beta"}])
    [contact] = store.create("Contact", [{"LastName": "Bo", "AccountId": elsewhere}])
    lead_id = make_lead(store)
    converted = make_lead(store, Email="kim@acme.io")
    assert convert_lead(sf, converted, create_opportunity=False)["success"] is True
    counts = [count(sf, t) for t in ("Account", "Contact", "Opportunity")]
    cases = [
        ({"lead_id": "not-an-id"}, "MALFORMED_ID"),
        ({"lead_id": MISSING_LEAD}, "INVALID_CROSS_REFERENCE_KEY"),
        ({"lead_id": account}, "INVALID_CROSS_REFERENCE_KEY"),  # an Account is not a Lead
        ({"lead_id": converted}, "CANNOT_UPDATE_CONVERTED_LEAD"),
        ({"lead_id": lead_id, "converted_status": "Working - Contacted"}, "INVALID_STATUS"),
        ({"lead_id": lead_id, "converted_status": "Converted!"}, "INVALID_STATUS"),
        ({"lead_id": lead_id, "contact_id": account}, "INVALID_CROSS_REFERENCE_KEY"),
        ({"lead_id": lead_id, "account_id": account, "contact_id": contact},
         "INVALID_CROSS_REFERENCE_KEY"),  # the Contact is on another Account
        ({"lead_id": lead_id, "account_id": contact}, "INVALID_CROSS_REFERENCE_KEY"),
        ({"lead_id": lead_id, "owner_id": "005nope"}, "MALFORMED_ID"),
    ]  # fmt: skip
    for args, code in cases:
        result = convert_lead(sf, args.pop("lead_id"), **args)
        assert (result["success"], codes(result)) == (False, [code]), (args, result)
        assert result["errors"][0]["message"]
        assert result["accountId"] is result["contactId"] is result["opportunityId"] is None
    assert convert_lead(sf, "not-an-id")["leadId"] is None
    [missing] = convert_leads(sf, [{"convertedStatus": "Closed - Converted"}])  # no leadId
    assert (missing["leadId"], codes(missing)) == (None, ["REQUIRED_FIELD_MISSING"])
    assert convert_lead(sf, MISSING_LEAD)["leadId"] == MISSING_LEAD
    assert [count(sf, t) for t in ("Account", "Contact", "Opportunity")] == counts
    lead = store.get(lead_id)
    assert (lead["IsConverted"], lead["Status"]) == (False, "Working - Contacted")


def test_a_batch_converts_the_good_lead_and_reports_the_bad_one(sandbox, sf, store):
    good, bad = make_lead(store), make_lead(store, Email="bo@acme.io")
    results = convert_leads(sf, [
        {"leadId": good, "convertedStatus": "Closed - Converted"},
        {"leadId": bad, "convertedStatus": "Closed - Not Converted"},
    ])  # fmt: skip
    assert [r["success"] for r in results] == [True, False]
    assert [r["leadId"] for r in results] == [good, bad]
    assert codes(results[1]) == ["INVALID_STATUS"]
    converted = sf.query("SELECT Id FROM Lead WHERE IsConverted = true")["records"]
    assert [r["Id"] for r in converted] == [good]
    assert [count(sf, t) for t in ("Account", "Contact", "Opportunity")] == [1, 1, 1]
    assert sandbox.counters["salesforce.convertLead"] == 1  # one call, one API request
    assert convert_leads(sf, []) == []
    with pytest.raises(SalesforceGeneralError) as too_many:
        convert_leads(sf, [{"leadId": bad, "convertedStatus": "Closed - Converted"}] * 101)
    assert too_many.value.status == 500
    assert too_many.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert store.get(bad)["IsConverted"] is False


# ---------------------------------------------------------------- the gate and faults


def test_expired_session_is_an_invalid_session_id_fault(sandbox, sf, store):
    lead_id = make_lead(store)
    assert store.expire_sessions() == 1
    with pytest.raises(SalesforceExpiredSession) as expired:
        convert_lead(sf, lead_id)
    assert expired.value.status == 500
    assert expired.value.content == [
        {
            "errorCode": "INVALID_SESSION_ID",
            "message": "INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: "
            "Illegal Session",
        }
    ]
    raw = sf.session.post(
        f"https://{sf.sf_instance}/services/Soap/u/{sf.sf_version}",
        data=(
            '<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
            '<convertLead xmlns="urn:partner.soap.sforce.com"/></e:Body></e:Envelope>'
        ),  # no SessionHeader at all
    )
    assert raw.status_code == 500
    assert "<faultcode>sf:INVALID_SESSION_ID</faultcode>" in raw.text
    assert "<sf:exceptionCode>INVALID_SESSION_ID</sf:exceptionCode>" in raw.text
    assert store.get(lead_id)["IsConverted"] is False
    assert sandbox.counters["salesforce.convertLead"] == 2
    assert sandbox.counters["salesforce.500"] == 2


def test_gate_faults_limits_and_locks(sandbox, sf, store):
    lead_id = make_lead(store)
    sandbox.queue_fault("salesforce", 503)
    with pytest.raises(SalesforceGeneralError) as unavailable:
        convert_lead(sf, lead_id)
    assert unavailable.value.status == 503
    assert unavailable.value.content[0]["errorCode"] == "SERVER_UNAVAILABLE"
    sandbox.queue_fault("salesforce_lock", 400)
    locked = convert_lead(sf, lead_id)
    assert (locked["success"], codes(locked)) == (False, ["UNABLE_TO_LOCK_ROW"])
    sandbox.settings["salesforce_daily_api_requests"] = 1  # a new budget: one request left
    sf.query("SELECT Id FROM Lead")
    with pytest.raises(SalesforceRefusedRequest) as refused:
        convert_lead(sf, lead_id)
    assert refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    sandbox.settings["salesforce_daily_api_requests"] = 100_000
    answered = convert_lead(sf, lead_id)
    assert answered["success"] is True
    assert store.get(lead_id)["IsConverted"] is True


def test_malformed_requests_are_client_faults_and_login_still_works(sandbox, sf, store):
    url = f"https://{sf.sf_instance}/services/Soap/u/{sf.sf_version}"
    for body in (
        "not xml at all",
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaa">]><x>&a;</x>',
        "<Envelope><Body><convertLead/></Body></Envelope>",  # not SOAP's namespace
        '<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
        '<describeEverything xmlns="urn:partner.soap.sforce.com"/></e:Body></e:Envelope>',
    ):
        response = sf.session.post(url, data=body, headers={"Content-Type": "text/xml"})
        assert response.status_code == 500, body
        assert "<faultcode>soapenv:Client</faultcode>" in response.text, body
    assert sandbox.counters["salesforce.soap_fault"] == 4
    with pytest.raises(SalesforceGeneralError) as bad_version:
        convert_lead(Salesforce(instance_url=sandbox.salesforce_url, session_id=sf.session_id,
                                session=sf.session, version="10.0"), make_lead(store))  # fmt: skip
    assert bad_version.value.content[0]["errorCode"] == "UNSUPPORTED_API_VERSION"
    # simple-salesforce's own SOAP login shares the endpoint; its session converts too.
    creds = credentials(sandbox)
    soap_sf = Salesforce(
        username=creds["username"],
        password=creds["password"],
        security_token=creds["security_token"],
        domain=f"{sf.sf_instance}/services/Soap/u/59.0#",
        session=sf.session,
    )
    assert convert_lead(soap_sf, make_lead(store))["success"] is True
    assert sandbox.counters["salesforce.soap_login"] == 1


# ---------------------------------------------------------------- the seed helper


def test_seed_helper_runs_the_same_conversion(sandbox, store):
    [account] = store.create("Account", [{"Name": "Acme"}])
    [contact] = store.create("Contact", [{"LastName": "Ng", "AccountId": account}])
    lead_id = make_lead(store)
    [event] = store.create("Event", [{"Subject": "Intro", "WhoId": lead_id,
                                      "StartDateTime": "2026-10-05T15:00:00Z",
                                      "DurationInMinutes": 30}])  # fmt: skip
    ids = store.convert_lead(lead_id, account, contact, converted_on=date(2026, 10, 6))
    assert ids == {"leadId": lead_id, "accountId": account, "contactId": contact,
                   "opportunityId": None}  # fmt: skip
    lead = store.get(lead_id)
    assert (lead["IsConverted"], lead["ConvertedDate"], lead["Status"]) == (
        True,
        "2026-10-06",
        "Closed - Converted",
    )
    assert store.get(event)["WhoId"] == contact
    assert store.get(contact)["Email"] == "ana@acme.io"  # a blank filled, as the API does
    with pytest.raises(SalesforceError) as twice:
        store.convert_lead(lead_id, account, contact)
    assert twice.value.code == "CANNOT_UPDATE_CONVERTED_LEAD"
    made = store.convert_lead(make_lead(store), create_opportunity=True)
    assert made["opportunityId"].startswith("006") and made["accountId"] != account
