"""Hooks: Airflow connections → the plain clients include/pql works with.

Each hook reads its stored connection, turns it into typed credentials (pql.connections.Conn)
and hands them to the vendor's one factory (the same the CLI calls); the client is made once
per hook and kept, as the providers' hooks do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from pql import connections

if TYPE_CHECKING:
    from pql.config import Config
    from pql.crm import Crm
    from pql.notify import Email


class _ClientHook(BaseHook):
    """A connection id → the client `make` builds from its Conn, built once per hook."""

    conn_name_attr = "conn_id"
    conn_type = "http"

    def __init__(self, conn_id: str | None = None):
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self._client: Any = None

    def connection(self) -> connections.Conn:
        """The stored connection as typed credentials (URL scheme, port and path kept)."""
        c = self.get_connection(self.conn_id)
        return connections.from_fields(
            self.conn_id, host=c.host, schema=c.schema, port=c.port, login=c.login,
            password=c.password, extra=c.extra_dejson,
        )  # fmt: skip

    def make(self, conn: connections.Conn) -> Any:
        raise NotImplementedError

    def get_conn(self) -> Any:
        if self._client is None:
            self._client = self.make(self.connection())
        return self._client


class ExportHook(_ClientHook):
    """Event exports (Mixpanel, Amplitude): (session with Basic auth, base URL or None).

    Connection: login/password = Mixpanel service-account username/secret or Amplitude API
    key/secret key; host = optional base URL (leave empty for the vendor's own host, chosen by
    the source's residency in config).
    """

    default_conn_name = "mixpanel_default"
    hook_name = "Event export"

    def make(self, conn):
        from pql import events

        return events.session(conn)


class EnrichmentHook(_ClientHook):
    """A firmographic enrichment API (Clearbit-style company lookup): (session with the key as
    a Bearer token, base URL or None). Connection: password = the API key; host = optional
    base URL (leave empty for the vendor's own host, https://company.clearbit.com)."""

    default_conn_name = "enrichment_default"
    hook_name = "Enrichment API"

    def make(self, conn):
        from pql.enrich import company_api

        return company_api.session(conn)


class SlackWebhookHook(_ClientHook):
    """A Slack incoming webhook: (session, URL); the URL is its connection's password."""

    default_conn_name = "slack_pql"
    hook_name = "Slack webhook"

    def make(self, conn):
        from pql import notify

        return notify.slack_webhook(conn)


class CrmHook(_ClientHook):
    """The configured CRM's adapter (pql.crm.connect) from its connection `crm.connection_id`.

    HubSpot: password = the private-app access token, host = optional base URL. Salesforce
    (conn_type salesforce, the provider's fields): login/password (+ extra security_token), or
    extras consumer_key/consumer_secret, domain, instance_url, version; optional `ca_bundle`.
    """

    hook_name = "CRM"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        super().__init__(cfg.crm.connection_id)

    def make(self, conn) -> Crm:
        from pql import crm

        return crm.connect(self.cfg.crm, conn, outcomes=self.cfg.outcomes)


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


def routing_clients(cfg) -> tuple | None:
    """The clients config `routing` needs, (CRM adapter or None, Slack webhook or None), from
    their connections; None when routing is off. The daily and intraday DAGs alike."""
    rule = cfg.routing
    if not (rule.crm_task or rule.slack):
        return None
    crm = CrmHook(cfg).get_conn() if rule.crm_task else None
    slack = SlackWebhookHook(rule.slack_connection_id).get_conn() if rule.slack else None
    return crm, slack
