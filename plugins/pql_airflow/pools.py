"""Airflow pools that make parallel tasks share one vendor's rate-limit budget.

Defined once in config/airflow_pools.json: docker-compose's init service imports it with
`airflow pools import`; the demo and the tests create them with `ensure()`.
"""

from __future__ import annotations

import json
from pathlib import Path

POOLS_FILE = Path(__file__).resolve().parents[2] / "config" / "airflow_pools.json"
CRM = "pql_crm_api"
NOTIFY = "pql_notify"  # Slack webhook and SMTP: the weekly report's delivery


def export_pool(kind: str) -> str:
    """The pool of a source kind's export calls (mixpanel, amplitude)."""
    return f"pql_{kind}_export"


def definitions() -> dict[str, dict]:
    return json.loads(POOLS_FILE.read_text())


def ensure() -> list[str]:
    """Create or update every pool in the metadata database; returns their names."""
    from airflow.models.pool import Pool

    for name, spec in definitions().items():
        Pool.create_or_update_pool(
            name, spec["slots"], spec["description"], spec.get("include_deferred", False)
        )
    return sorted(definitions())
