"""The CRM behind one interface: everything the pipeline asks of a CRM, whichever it is.

`connect(target, conn)` builds the adapter `target.kind` names (HubSpot or Salesforce) from a
connection; the pipeline steps, the CLI and the DAGs only ever talk to the `Crm` protocol, so
nothing outside this package knows which CRM it is. Each adapter owns its client, its budgets
and its re-login, and runs the one sync engine (pql.crm.sync) with its own record operations.

Adding a CRM: a module here with its adapter (implementing `Crm` and `sync.People`), its
settings model added to `targets.CrmTarget`, one line in ADAPTERS, an emulator in the sandbox,
and the contract suite (tests/pql/crm/test_contract.py) run against it. No edit elsewhere.
"""

from __future__ import annotations

import copy
from datetime import datetime
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd

    from pql.config import Routing
    from pql.connections import Conn
    from pql.crm.targets import CrmTarget
    from pql.lake import Lake
    from pql.report.outcomes import Changes

# kind → "module:factory"; the factory takes (target, conn, **options) and returns a Crm.
ADAPTERS = {
    "hubspot": "pql.crm.hubspot:connect",
    "salesforce": "pql.crm.salesforce:connect",
}


class SyncError(Exception):
    """Too many records were rejected, or the CRM could not be reached (the message says
    which, with examples and where the run's results are)."""


class Crm(Protocol):
    """What the pipeline does with a CRM. Every method is idempotent over its input."""

    kind: str  # the target's kind, also the lake folder of its ledgers and run results
    label: str  # how messages name it ("HubSpot")

    def sync(
        self,
        lake: Lake,
        scores: pd.DataFrame,
        *,
        dry_run: bool = False,
        min_score_change: float | None = None,
    ) -> dict:
        """Write the people whose values changed (or, dry, say what would change); counts.
        With `min_score_change` (the frequent runs), only changes that flip the flag or move
        the score at least that much: the others are counted `deferred` and left to a run
        without it."""

    def sync_accounts(self, lake: Lake, accounts: pd.DataFrame) -> dict:
        """Write account qualification (PQA) to the CRM's companies/Accounts; counts."""

    def read_accounts(self) -> pd.DataFrame:
        """Firmographics of the CRM's companies/Accounts by domain (enrichment provider crm)."""

    def pull_outcomes(self, since: datetime | None) -> dict[str, Changes]:
        """Meetings, won deals and sales tasks modified since `since` (None: all)."""

    def create_tasks(
        self, leads: pd.DataFrame, rule: Routing, now: datetime, made: list
    ) -> list[tuple]:
        """A follow-up task per newly qualified lead for its owner; (email, qualified_at,
        detail) appended to `made` as each batch lands."""


class Retargetable:
    """An adapter that can write with other settings while sharing its client (and budgets)."""

    target: object

    def with_target(self, target):
        """This adapter, or a copy of it sharing its client, writing with `target`'s settings."""
        if target is self.target:
            return self
        other = copy.copy(self)
        other.target = target
        return other


def connect(target: CrmTarget, conn: Conn, **options) -> Crm:
    """The adapter for `target.kind`, logged in with `conn` (options: e.g. the outcome field)."""
    module, name = ADAPTERS[target.kind].split(":")
    return getattr(import_module(module), name)(target, conn, **options)
