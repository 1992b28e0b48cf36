"""`pql-sandbox start | status | env | crm | stop` as a user runs them, real server and all."""

from __future__ import annotations

import json

import requests
from click.testing import CliRunner

from sandbox import cli


def test_sandbox_lifecycle(tmp_path):
    runner = CliRunner()
    root = str(tmp_path / "sbx")
    started = runner.invoke(
        cli.main,
        ["start", "--root", root, "--users", "60", "--days", "10", "--seed", "3"],
    )
    assert started.exit_code == 0, started.output
    assert "world: 60 users" in started.output
    try:
        status = runner.invoke(cli.main, ["status", "--root", root])
        assert status.exit_code == 0 and "running at http://127.0.0.1:" in status.output
        env = runner.invoke(cli.main, ["env", "--root", root])
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in env.output.strip().splitlines()
        )
        hub = json.loads(exports["AIRFLOW_CONN_HUBSPOT_DEFAULT"].strip("'"))
        resp = requests.get(
            f"{hub['host']}/crm/v3/objects/contacts?limit=5",
            headers={"Authorization": f"Bearer {hub['password']}"},
            timeout=10,
        )
        assert resp.status_code == 200 and len(resp.json()["results"]) == 5
        crm = runner.invoke(
            cli.main,
            ["crm", "companies", "--root", root, "--limit", "3"],
            terminal_width=200,
        )
        assert crm.exit_code == 0 and "companies:" in crm.output and "domain" in crm.output
    finally:
        stopped = runner.invoke(cli.main, ["stop", "--root", root])
    assert "stopped" in stopped.output
    after = runner.invoke(cli.main, ["status", "--root", root])
    assert after.exit_code == 3 and "not running" in after.output


def test_an_empty_sandbox_has_vendors_up_and_nothing_in_them(tmp_path):
    runner = CliRunner()
    root = str(tmp_path / "empty")
    started = runner.invoke(cli.main, ["start", "--root", root, "--empty"])
    assert started.exit_code == 0, started.output
    assert "world:" not in started.output and "sandbox running at" in started.output
    try:
        env = runner.invoke(cli.main, ["env", "--root", root])
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in env.output.strip().splitlines()
        )
        hub = json.loads(exports["AIRFLOW_CONN_HUBSPOT_DEFAULT"].strip("'"))
        resp = requests.get(
            f"{hub['host']}/crm/v3/objects/contacts?limit=5",
            headers={"Authorization": f"Bearer {hub['password']}"},
            timeout=10,
        )
        assert resp.status_code == 200 and resp.json()["results"] == []
        mp = json.loads(exports["AIRFLOW_CONN_MIXPANEL_DEFAULT"].strip("'"))
        export = requests.get(f"{mp['host']}/api/2.0/export", auth=(mp["login"], mp["password"]),
                              params={"from_date": "2026-01-01", "to_date": "2026-01-02",
                                      "project_id": 3141592}, timeout=10)  # fmt: skip
        assert export.status_code == 200 and export.content == b""
    finally:
        runner.invoke(cli.main, ["stop", "--root", root])
