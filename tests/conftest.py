"""Shared fixtures: a sandbox server running in this process on a free port."""

from __future__ import annotations

import pytest

from sandbox import server


@pytest.fixture
def sandbox(tmp_path):
    """A fresh sandbox (empty state) served on 127.0.0.1; yields its SandboxState (.base_url set).

    Rate limits are raised so that tests are not slowed by them unless a test lowers them.
    """
    fast = {
        "hubspot_requests_per_10s": 100_000,
        "hubspot_search_per_second": 100_000,
        "mixpanel_queries_per_hour": 100_000,
        "mixpanel_queries_per_second": 100_000,
    }
    with server.running(tmp_path / "sandbox", settings=fast) as state:
        yield state
