"""docker-compose.yaml and the Dockerfile agree with the pinned requirements (Docker is not
available on build machines, so this is what can be checked here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_every_requirement_is_pinned():
    lines = [x.split("#")[0].strip() for x in (ROOT / "requirements.txt").read_text().splitlines()]
    assert all("==" in x for x in lines if x)


def test_image_matches_pinned_airflow():
    base = re.search(r"FROM apache/airflow:(\S+)-python3\.11", (ROOT / "Dockerfile").read_text())
    assert base and base.group(1) == _pins()["apache-airflow"]


def test_compose_runs_every_airflow_3_component():
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    commands = {
        s.get("command") if isinstance(s.get("command"), str) else None
        for s in compose["services"].values()
    }
    assert {"api-server", "scheduler", "dag-processor", "triggerer"} <= commands
    init = compose["services"]["airflow-init"]
    assert init["entrypoint"] == ["/bin/bash", "-c"]
    assert init["command"] == [
        "airflow db migrate && airflow pools import /opt/pql/config/airflow_pools.json"
    ]
    for name, svc in compose["services"].items():
        if name.startswith("airflow"):
            env = svc["environment"]
            assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/pql/dags"
            assert "PQL_LAKE" in env and svc["env_file"] == ".env"
    example = (ROOT / ".env.example").read_text()
    for var in ("AIRFLOW_CONN_MIXPANEL_DEFAULT", "AIRFLOW_CONN_HUBSPOT_DEFAULT"):
        assert var in example
    assert "pat-" not in example  # placeholders only, never a real-looking token
