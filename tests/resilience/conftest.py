"""A fresh Airflow metadata database (SQLite) for the DAG runs of these tests, once per session
(as tests/dags/conftest.py does for its own)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils.db import resetdb

    from pql_airflow import pools

    resetdb()
    pools.ensure()
