"""Shared fixtures. Airflow's environment is set here, before any test imports Airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pql-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    }
)

from sandbox import server  # noqa: E402 (after the environment is set)

FAST = {
    "hubspot_requests_per_10s": 100_000,
    "hubspot_search_per_second": 100_000,
    "mixpanel_queries_per_hour": 100_000,
    "mixpanel_queries_per_second": 100_000,
}


@pytest.fixture
def sandbox(tmp_path):
    """A fresh sandbox (empty state) served on 127.0.0.1; yields its SandboxState (.base_url set).

    Rate limits are raised so that tests are not slowed by them unless a test lowers them.
    """
    with server.running(tmp_path / "sandbox", settings=dict(FAST)) as state:
        yield state


def scores_frame(emails: list[str], score: int = 70):
    """A scores snapshot for CRM sync tests: every user with the same score (PQL from 50)."""
    import pandas as pd

    n = len(emails)
    return pd.DataFrame(
        {
            "email": emails,
            "score": [score] * n,
            "flag": [score >= 50] * n,
            "qualified_at": [pd.Timestamp("2026-10-01", tz="UTC") if score >= 50 else pd.NaT] * n,
            "reasons": ["invited 3 teammates"] * n,
            "model_version": ["weighted-test"] * n,
        }
    )


def salesforce_login(state):
    """A function that logs in to the sandbox's Salesforce afresh (client-credentials flow, as
    the provider's hook does) and returns a simple-salesforce client; `.calls` counts logins."""
    import requests
    from simple_salesforce import Salesforce

    from sandbox.salesforce import credentials, tls_files

    session = requests.Session()
    session.trust_env = False
    session.verify = str(tls_files(state)["ca"])
    creds = credentials(state)

    def login() -> Salesforce:
        login.calls.append(1)
        token = session.post(
            f"{state.salesforce_url}/services/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": creds["client_id"],
                  "client_secret": creds["client_secret"]},
            timeout=30,
        ).json()["access_token"]  # fmt: skip
        return Salesforce(instance_url=state.salesforce_url, session_id=token, session=session)

    login.calls, login.session = [], session
    return login


@pytest.fixture
def sf_login(sandbox):
    """salesforce_login for the test's sandbox."""
    login = salesforce_login(sandbox)
    yield login
    login.session.close()


@pytest.fixture
def sf(sf_login):
    """A simple-salesforce client logged in to the test's sandbox."""
    return sf_login()
