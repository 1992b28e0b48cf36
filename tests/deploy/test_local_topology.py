"""docker-compose.yaml's production topology, run without Docker, runs the pipeline.

PostgreSQL and Redis on their own ports, deploy/airflow-init.sh, then the api-server, scheduler,
dag-processor, triggerer and one Celery worker as local processes with the compose file's own
environment (deploy/topology.py). The pipeline is driven as an operator would: REST API v2 with a
token, the extract triggered, the score DAG started by the scheduler from the extract's Asset
event, and the scores read back from the sandbox's HubSpot contacts. Every compose health check
must pass against the running processes, and nothing may be left running afterwards.

A missing PostgreSQL or Redis is a failure that says what to install, never a skip:
`./dev.sh test` installs both when run as root.
"""

from __future__ import annotations

import pytest

from deploy import topology

pytestmark = pytest.mark.topology


def test_compose_topology_runs_extract_then_score_sync_through_the_rest_api(tmp_path):
    lines: list[str] = []
    try:
        result = topology.run(tmp_path, users=200, days=10, seed=7, timeout=300, say=lines.append)
    except topology.TopologyError as exc:
        pytest.fail(f"{exc}\n\nprogress:\n" + "\n".join(lines), pytrace=False)
    print("\n".join(lines))

    assert result["healthchecks"] == {name: "ok" for name in topology.compose_components()}, result[
        "healthchecks"
    ]
    run = result["run"]
    # One extract run: the scheduler found the triggered run for its next interval and did not
    # start another; the score DAG ran because of the extract's Asset event.
    assert run["extract_runs"] == 1
    assert run["score_run_type"] == "asset_triggered"
    crm = result["crm"]
    assert crm["scored_users"] > 100
    assert crm["mismatched"] == []  # every scored user with an email holds that pql_score
    assert crm["contacts_with_score"] == crm["scored_users"]
    # Torn down: no process is left in any group the topology started.
    assert topology.group_members(set(result["pgids"])) == []
