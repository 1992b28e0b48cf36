"""What config/pql.yaml says about the CRM (its `crm:` section), one model per CRM.

Kept with the adapters so a new CRM brings its settings with it: add its model to CrmTarget.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pql.schema import Strict

CrmField = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=100)]


class CrmFields(Strict):
    score: CrmField = "pql_score"
    flag: CrmField = "pql_flag"
    qualified_at: CrmField = "pql_qualified_at"
    reasons: CrmField = "pql_reasons"
    model_version: CrmField = "pql_model_version"
    account_qualified: CrmField = "pql_account_qualified"  # on companies (PQA)
    account_score: CrmField = "pql_account_score"
    account_reasons: CrmField = "pql_account_reasons"


class SyncRules(Strict):
    """How either CRM is written: what to create, un-flag, verify, and do with hand edits."""

    create_missing: bool = True  # users missing from the CRM are created (else counted)
    max_failed_share: float = Field(0.05, ge=0, le=1)  # a run fails above this rejected share
    sync_accounts: bool = True  # write account qualification (PQA) to companies/Accounts
    unflag: bool = True  # a lead that stops qualifying is written flag=false (never deleted)
    on_manual_edit: Literal["overwrite", "keep"] = "overwrite"  # a value edited in the CRM
    verify: Literal["sample", "all", "off"] = "sample"  # read back after writing
    verify_sample: int = Field(50, ge=1)


class HubSpotTarget(SyncRules):
    kind: Literal["hubspot"]
    connection_id: str = "hubspot_default"
    property_group: CrmField = "pql"
    fields: CrmFields = CrmFields()
    requests_per_10s: int = Field(100, ge=1, le=250)  # the app's tier: 100, 190 (Pro/Ent), 250
    # API calls a day left for other integrations: a run writes only what fits under HubSpot's
    # daily limit minus this (read from its X-HubSpot-RateLimit-Daily-Remaining header).
    daily_reserve: int = Field(10_000, ge=0)


# A Salesforce field API name (custom fields end in __c).
SalesforceField = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=100)]


class SalesforceFields(Strict):
    """Field API names written on both Lead and Contact (the emulator's defaults)."""

    score: SalesforceField = "PQL_Score__c"
    flag: SalesforceField = "PQL_Flag__c"
    qualified_at: SalesforceField = "PQL_Qualified_At__c"
    reasons: SalesforceField = "PQL_Reasons__c"
    model_version: SalesforceField = "PQL_Model_Version__c"
    account_qualified: SalesforceField = "PQA_Qualified__c"  # on Account (PQA)
    account_score: SalesforceField = "PQA_Best_Score__c"
    account_reasons: SalesforceField = "PQA_Reasons__c"


class SalesforceTarget(SyncRules):
    kind: Literal["salesforce"]
    connection_id: str = "salesforce_default"
    fields: SalesforceFields = SalesforceFields()
    # How a user is found on Lead and Contact: by Email, or by an external id field holding
    # the product's user id (then new Leads get it too).
    match_on: SalesforceField = "Email"
    lead_source: str = "Product"  # LeadSource of the Leads the sync creates
    bulk_threshold: int = Field(2000, ge=1)  # records to write at/above which Bulk API 2.0 is used


CrmTarget = Annotated[HubSpotTarget | SalesforceTarget, Field(discriminator="kind")]
