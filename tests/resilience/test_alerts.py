"""Failure alerts: the text keeps no secret and no URL path; the email channel works through the
Airflow SMTP provider; a broken channel never raises. (The Slack channel, end to end through a
failing dag.test() run: test_secrets.py.)"""

from __future__ import annotations

import json
import os
import socket

import pytest
import requests

from pql import alerts, config
from pql.config import Alerts
from pql.http import HttpError, send
from pql_airflow.hooks import smtp_sender

FAILURE = alerts.Failure("pql_score_sync", "sync", "manual__2026-11-23", 3, 3, None, "")


def test_error_text_drops_secrets_and_url_paths():
    webhook = "https://hooks.slack.com/services/T000/B000/XyZsecretKey123"
    error = RuntimeError(
        f"HTTPSConnectionPool(host='hooks.slack.com', port=443): Max retries exceeded with "
        f"url: /services/T000/B000/XyZsecretKey123 (token pat-na1-abcdef) {webhook}?a=b"
    )
    text = alerts.error_line(error, secrets=["pat-na1-abcdef"])
    assert "XyZsecretKey123" not in text and "pat-na1-abcdef" not in text
    assert text.startswith("RuntimeError: ") and "https://hooks.slack.com/…" in text
    long = alerts.error_line("x" * 5000)
    assert len(long) == alerts.MAX_ERROR_CHARS and long.endswith("…")


def test_an_unreachable_webhook_is_named_without_its_secret_path():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/slack/services/T0/B0/secretpart"
    with pytest.raises(HttpError) as err:
        send(requests.Session(), "POST", url, attempts=1, secret_url=True, json={"text": "x"})
    assert "secretpart" not in str(err.value) and err.value.__cause__ is None
    assert f"127.0.0.1:{port}/…" in str(err.value)


def test_failure_text_names_task_run_try_and_runbook():
    error, log_url = ValueError("bad line threshold"), "http://af/dags/x/runs/y/tasks/z"
    f = alerts.Failure("pql_extract_mixpanel", "export_day", "scheduled__2026-11-22", 4, 4,
                       error, log_url)  # fmt: skip
    subject, body = alerts.failure_text(f, Alerts(slack=True))
    assert subject == "PQL pipeline: pql_extract_mixpanel.export_day failed"
    for part in ("scheduled__2026-11-22", "try 4 of 4", "ValueError: bad line threshold",
                 "Log: http://af/", alerts.RUNBOOK):  # fmt: skip
        assert part in body


def test_alerts_by_email_through_the_smtp_provider():
    from aiosmtpd.controller import Controller

    received = []

    class Keep:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(Keep(), hostname="127.0.0.1", port=port)
    ctl.start()
    var = "AIRFLOW_CONN_SMTP_ALERTS_TEST"
    os.environ[var] = json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                                  "extra": {"from_email": "pql@example.com",
                                            "disable_tls": True, "disable_ssl": True}})  # fmt: skip
    try:
        rule = Alerts(email_to=["oncall@example.com"], smtp_connection_id="smtp_alerts_test")
        subject, body = alerts.failure_text(FAILURE, rule)
        reached = alerts.send(rule, subject, body, send_email=smtp_sender(rule.smtp_connection_id))
    finally:
        os.environ.pop(var)
        ctl.stop()
    assert reached == ["email"]
    [(to, message)] = received
    assert to == ["oncall@example.com"] and "pql_score_sync.sync failed" in message


def test_a_broken_channel_is_logged_not_raised(sandbox, caplog):
    rule = Alerts(slack=True, email_to=["a@example.com"])

    def refuse(mail):
        raise ConnectionRefusedError("smtp down")

    unknown = (requests.Session(), f"{sandbox.base_url}/slack/services/T0/B0/secretpart")
    assert alerts.send(rule, "s", "b", slack=unknown, send_email=refuse) == []
    assert "no_service" in caplog.text and "smtp down" in caplog.text
    assert "secretpart" not in caplog.text


def test_alerts_config_errors_name_the_line(tmp_path):
    text = config.DEFAULT_CONFIG.read_text()
    text = text[: text.index("\nalerts:")] + "\nalerts:\n  slack: maybe\n  email_to: [nope]\n"
    path = tmp_path / "pql.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert len(err.value.problems) == 2
    assert all(p.startswith("line ") and "alerts." in p for p in err.value.problems)
