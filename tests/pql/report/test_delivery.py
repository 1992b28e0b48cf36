"""Delivering the weekly report: Slack (the sandbox's webhook emulator) and email (a local SMTP
server this test starts, reached through the Airflow SMTP provider's hook)."""

from __future__ import annotations

import email
import json
import os
import socket
from email import policy

import pytest
import requests

from pql.config import Outcomes
from pql.http import HttpError
from pql.lake import Lake
from pql.report import delivery
from sandbox import slack
from tests import report_sample

WEEK = report_sample.WEEK
URL = "https://airflow.example.com/pql-reports/"


@pytest.fixture
def lake(tmp_path):
    report_sample.write(tmp_path / "lake")
    return Lake(tmp_path / "lake")


@pytest.fixture
def smtp_server():
    """An SMTP server on 127.0.0.1 that keeps what it receives; yields (port, messages)."""
    from aiosmtpd.controller import Controller

    received = []

    class Keep:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.rcpt_tos, envelope.content))
            return "250 OK"

    with socket.socket() as s:  # a free port (the controller probes the one it is given)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctl = Controller(Keep(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, received
    finally:
        ctl.stop()


@pytest.fixture
def smtp_conn(smtp_server):
    port, received = smtp_server
    var = "AIRFLOW_CONN_SMTP_PQL_TEST"
    os.environ[var] = json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"from_email": "pql@acme.io", "disable_tls": True, "disable_ssl": True,
                      "timeout": 10, "retry_limit": 0},
        }
    )  # fmt: skip
    try:
        yield "smtp_pql_test", received
    finally:
        os.environ.pop(var)


def test_headline_numbers_are_the_reports_own(lake):
    h = delivery.headline(lake.reports(WEEK), WEEK)
    assert (h.users, h.pqls) == (120, 12)
    assert h.rates["pql_meeting"]["k"] == 4 and h.rates["pql_meeting"]["n"] == 12
    assert h.rates["pql_won"]["text"] == "25.0% (3 of 12; 95% CI 8.9-53.2%)"
    assert delivery.subject(h) == (
        "PQL weekly report, week of 2026-11-16: PQL→won 25.0% (3/12) vs non-PQL 0.0% (0/80)"
        " — needs attention: median hours from qualifying to first sales touch (meeting)"
    )
    assert h.lines[1].startswith("PQL→meeting 33.3% (4 of 12; 95% CI 13.8-60.9%) vs non-PQL")
    with pytest.raises(FileNotFoundError, match="write it first"):
        delivery.headline(lake.reports(WEEK) / "nope", WEEK)


def test_email_carries_the_page_the_csv_files_and_the_headline(lake, smtp_conn):
    from pql_airflow.hooks import smtp_sender

    conn_id, received = smtp_conn
    rule = Outcomes(email_to=["cro@acme.io", "revops@acme.io"], smtp_connection_id=conn_id,
                    report_url=URL)  # fmt: skip
    got = delivery.deliver(lake, rule, WEEK, send_email=smtp_sender(conn_id))
    assert got["email"] == 2
    ((rcpt, raw),) = received
    assert sorted(rcpt) == ["cro@acme.io", "revops@acme.io"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"].startswith("PQL weekly report, week of 2026-11-16: PQL→won 25.0% (3/12)")
    assert msg["From"] == "pql@acme.io"
    body = msg.get_body(("html",)).get_content()
    for figure in (
        "12 PQLs of 120 users in all",
        "PQL→meeting 33.3% (4 of 12; 95% CI",
        "PQL→won 25.0% (3 of 12; 95% CI 8.9-53.2%)",
        "Needs attention",
    ):
        assert figure in body
    assert f'href="{URL}{WEEK}/"' in body
    files = {p.get_filename(): p.get_payload(decode=True) for p in msg.iter_attachments()}
    page = (lake.reports(WEEK) / "index.html").read_bytes()
    assert files[f"pql-report-{WEEK}.html"] == page
    assert files[f"pql-{WEEK}-totals.csv"] == (lake.reports(WEEK) / "totals.csv").read_bytes()
    # Once per week: a retry or a re-run does not mail the same week again.
    again = delivery.deliver(lake, rule, WEEK, send_email=smtp_sender(conn_id))
    assert again["email"] == 0 and again["already_sent"] == ["email"] and len(received) == 1
    forced = delivery.deliver(lake, rule, WEEK, send_email=smtp_sender(conn_id), force=True)
    assert forced["email"] == 2 and len(received) == 2


def test_slack_summary_posts_headline_and_link_once(lake, sandbox):
    webhook = (requests.Session(), sandbox.base_url + slack.webhook_path(sandbox))
    rule = Outcomes(slack=True, report_url=URL)
    got = delivery.deliver(lake, rule, WEEK, slack=webhook)
    assert got["slack"] == 1
    (msg,) = slack.messages(sandbox)
    text = msg["text"]
    assert text.startswith("*PQL weekly report — week of 2026-11-16*")
    assert "12 PQLs of 120 users in all" in text
    assert "PQL→meeting 33.3% (4 of 12; 95% CI 13.8-60.9%) vs non-PQL 0.0% (0 of 80" in text
    assert "PQL→won 25.0% (3 of 12; 95% CI 8.9-53.2%)" in text
    assert f"<{URL}{WEEK}/|Open the report>" in text
    assert delivery.deliver(lake, rule, WEEK, slack=webhook)["already_sent"] == ["slack"]
    assert len(slack.messages(sandbox)) == 1


def test_a_failed_channel_keeps_the_ones_already_sent(lake, sandbox):
    sent = []
    wrong = (requests.Session(), sandbox.base_url + "/slack/services/T0/B0/nope")
    rule = Outcomes(email_to=["cro@acme.io"], slack=True)
    with pytest.raises(HttpError, match="Slack webhook answered 404"):
        delivery.deliver(lake, rule, WEEK, send_email=sent.append, slack=wrong)
    assert len(sent) == 1
    ok = (requests.Session(), sandbox.base_url + slack.webhook_path(sandbox))
    retry = delivery.deliver(lake, rule, WEEK, send_email=sent.append, slack=ok)
    assert retry == {"week": "2026-11-16", "email": 0, "slack": 1, "already_sent": ["email"]}
    assert len(sent) == 1


def test_nothing_configured_sends_nothing(lake):
    got = delivery.deliver(lake, Outcomes(), WEEK)
    assert got["email"] == got["slack"] == 0
    with pytest.raises(ValueError, match="no webhook URL"):
        delivery.deliver(lake, Outcomes(slack=True), WEEK)


def test_config_rejects_a_malformed_address():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Outcomes(email_to=["cro at acme.io"])
    with pytest.raises(ValidationError):
        Outcomes(report_url="airflow.example.com")
