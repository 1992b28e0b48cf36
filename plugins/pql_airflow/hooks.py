"""Hooks: Airflow connections → the vendor clients that include/pql works with."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import BaseHook

if TYPE_CHECKING:
    import requests
    from hubspot import HubSpot
    from simple_salesforce import Salesforce

    from pql.notify import Email


class ExportHook(HttpHook):
    """Event exports (Mixpanel, Amplitude) over the HTTP provider: Basic auth from a connection.

    Connection: login/password = Mixpanel service-account username/secret or Amplitude API
    key/secret key; host = optional base URL (leave empty for the vendor's own host, chosen by
    the source's residency in config).
    """

    conn_name_attr = "http_conn_id"
    default_conn_name = "mixpanel_default"
    conn_type = "http"
    hook_name = "Event export"

    def __init__(self, http_conn_id: str = default_conn_name, **kwargs):
        super().__init__(method="GET", http_conn_id=http_conn_id, **kwargs)

    def session_and_host(self) -> tuple[requests.Session, str | None]:
        session = self.get_conn()
        return session, (self.base_url or None)


class HubSpotHook(BaseHook):
    """HubSpot private-app token from a connection (password), optional host (sandbox, proxy)."""

    conn_name_attr = "hubspot_conn_id"
    default_conn_name = "hubspot_default"
    conn_type = "http"
    hook_name = "HubSpot"

    def __init__(self, hubspot_conn_id: str = default_conn_name):
        super().__init__()
        self.hubspot_conn_id = hubspot_conn_id

    def get_conn(self) -> HubSpot:
        from pql.crm.hubspot import client

        conn = self.get_connection(self.hubspot_conn_id)
        if not conn.password:
            raise ValueError(
                f"connection {self.hubspot_conn_id!r} has no password: put the "
                "HubSpot private-app access token there"
            )
        host = conn.host or None
        if host and "://" not in host:
            host = f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
        return client(conn.password, host)


def salesforce_login(conn_id: str = "salesforce_default") -> Callable[[], Salesforce]:
    """A function that logs in to Salesforce afresh from a connection, via the provider's hook.

    The provider's SalesforceHook (conn_type salesforce: login/password + security token, or
    consumer_key/consumer_secret, domain, instance_url in extras) caches its client per hook, so
    each call builds a new hook: the sync calls it again once when a session expires. An optional
    extra `ca_bundle` (ignored by the provider) is the CA file requests verifies TLS with.
    """

    def login() -> Salesforce:
        import requests
        from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

        session = requests.Session()
        hook = SalesforceHook(salesforce_conn_id=conn_id, session=session)
        ca = hook.get_connection(conn_id).extra_dejson.get("ca_bundle")
        if ca:
            session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
            session.verify = ca
        return hook.get_conn()

    return login


class EnrichmentHook(HttpHook):
    """A firmographic enrichment API (Clearbit-style company lookup): Bearer token auth.

    Connection: password = the API key; host = optional base URL (leave empty for the vendor's
    own host, https://company.clearbit.com).
    """

    conn_name_attr = "http_conn_id"
    default_conn_name = "enrichment_default"
    conn_type = "http"
    hook_name = "Enrichment API"

    def __init__(self, http_conn_id: str = default_conn_name, **kwargs):
        super().__init__(method="GET", http_conn_id=http_conn_id, **kwargs)

    def _configure_session_from_auth(self, session, connection):
        if not connection.password:
            raise ValueError(
                f"connection {self.http_conn_id!r} has no password: "
                "put the enrichment API key there"
            )
        session.auth = None
        session.headers["Authorization"] = f"Bearer {connection.password}"
        return session

    def session_and_host(self) -> tuple[requests.Session, str | None]:
        session = self.get_conn()
        conn = self.get_connection(self.http_conn_id)
        return session, (self.base_url if conn.host else None)


class SlackWebhookHook(BaseHook):
    """A Slack incoming-webhook URL from a connection: its password (the URL is a secret)."""

    conn_name_attr = "slack_conn_id"
    default_conn_name = "slack_pql"
    conn_type = "http"
    hook_name = "Slack webhook"

    def __init__(self, slack_conn_id: str = default_conn_name):
        super().__init__()
        self.slack_conn_id = slack_conn_id

    def session_and_url(self) -> tuple[requests.Session, str]:
        import requests

        conn = self.get_connection(self.slack_conn_id)
        url = conn.password or ""
        if not url.startswith("https://") and not url.startswith("http://"):
            raise ValueError(
                f"connection {self.slack_conn_id!r}: put the Slack incoming-webhook URL "
                "(https://hooks.slack.com/services/...) in its password"
            )
        return requests.Session(), url


def smtp_sender(conn_id: str = "smtp_default") -> Callable[[Email], None]:
    """A function that sends a pql.notify.Email through the SMTP provider's SmtpHook.

    Connection (type smtp): host, port, login/password (when the server wants them) and extras
    from_email (the sender, required), disable_tls / disable_ssl, timeout, retry_limit.
    Attachments are copied under their email names first (the hook names them by file name).
    """

    def send(mail: Email) -> None:
        import shutil
        import tempfile
        from pathlib import Path

        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with tempfile.TemporaryDirectory(prefix="pql-mail-") as tmp:
            files = []
            for name, source in mail.attachments:
                shutil.copyfile(source, Path(tmp) / name)
                files.append(str(Path(tmp) / name))
            with SmtpHook(smtp_conn_id=conn_id) as hook:
                hook.send_email_smtp(
                    to=list(mail.to), subject=mail.subject, html_content=mail.html, files=files
                )

    return send
