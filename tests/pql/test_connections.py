"""Connections parsed one way: URI or JSON, from the CLI's environment or an Airflow hook."""

from __future__ import annotations

import json

import pytest

from pql import connections, events


def test_a_vendor_scheme_uri_means_https_with_its_path_and_port():
    c = connections.from_uri("mixpanel_eu", "mixpanel://svc.user:s%40cret@data-eu.mixpanel.com")
    assert (c.host, c.login, c.password) == ("https://data-eu.mixpanel.com", "svc.user", "s@cret")
    c = connections.from_uri("x", "https://proxy.example.com:8443/mixpanel/?timeout=5")
    assert c.host == "https://proxy.example.com:8443/mixpanel" and c.extra == {"timeout": "5"}
    assert (
        connections.from_uri("x", "http://127.0.0.1:9000/api").host == "http://127.0.0.1:9000/api"
    )


def test_json_fields_keep_a_full_url_and_build_one_from_host_and_schema():
    assert connections.from_fields("x", host="https://a.io/v2/").host == "https://a.io/v2"
    assert connections.from_fields("x", host="a.io", port=8443).host == "https://a.io:8443"
    assert connections.from_fields("x", host="a.io", schema="http").host == "http://a.io"
    assert connections.from_fields("x", host="", extra='{"ca_bundle": "/ca.pem"}').host is None


def test_missing_connection_and_missing_secret_say_what_to_do(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(LookupError, match="export AIRFLOW_CONN_NOPE"):
        connections.from_env("nope")
    with pytest.raises(ValueError, match="'hubspot_x' has no password: put the token there"):
        connections.from_fields("hubspot_x", host="h").secret("the token")


@pytest.mark.parametrize(
    "stored",
    [
        "mixpanel://u:p@data-eu.mixpanel.com",
        json.dumps(
            {
                "conn_type": "http",
                "host": "https://data-eu.mixpanel.com",
                "login": "u",
                "password": "p",
            }
        ),  # fmt: skip
    ],
)
def test_the_cli_and_the_airflow_hook_build_the_same_client(monkeypatch, stored):
    from pql_airflow.hooks import ExportHook

    monkeypatch.setenv("AIRFLOW_CONN_MP_TEST", stored)
    cli_session, cli_host = events.session(connections.from_env("mp_test"))
    hook = ExportHook("mp_test")
    hook_session, hook_host = hook.get_conn()
    assert cli_host == hook_host == "https://data-eu.mixpanel.com"
    assert cli_session.auth == hook_session.auth == ("u", "p")
    assert hook.get_conn()[0] is hook_session  # made once per hook
