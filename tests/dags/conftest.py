"""A fresh Airflow metadata database (SQLite), once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils.db import resetdb

    from pql_airflow import pools

    resetdb()
    pools.ensure()
