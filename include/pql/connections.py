"""Connections as typed credentials, parsed one way for the Airflow hooks and the CLI alike.

Inside Airflow a hook hands over its stored connection's fields (`from_fields`); outside it, the
CLI reads the same connection from AIRFLOW_CONN_<ID>, a URI or JSON as Airflow writes them
(`from_env`). Either way the base URL keeps what was written: https unless http is spelled out
(a vendor's own scheme such as mixpanel:// means https), the port and the path. Each vendor's
factory (pql.events.session, pql.crm.connect, pql.enrich.company_api.session, pql.notify.
slack_webhook) turns a Conn into its client.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass(frozen=True)
class Conn:
    """One connection: its id, base URL (None: the vendor's own host), login, secret, extras."""

    conn_id: str
    host: str | None
    login: str | None
    password: str | None = field(repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    def secret(self, what: str) -> str:
        """The password, or a clear error saying what it must hold."""
        if not self.password:
            raise ValueError(f"connection {self.conn_id!r} has no password: put {what} there")
        return self.password


def base_url(host: str | None, schema: str | None = None, port: int | None = None) -> str | None:
    """The URL a connection's host field means: kept whole when it is one; else https (http
    only when the schema says so) with the port; never a trailing slash."""
    if not host:
        return None
    if "://" in host:
        return host.rstrip("/")
    scheme = "http" if (schema or "").lower() == "http" else "https"
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def from_fields(conn_id: str, *, host=None, schema=None, port=None, login=None, password=None,
                extra=None) -> Conn:  # fmt: skip
    """A Conn from a stored connection's fields (what an Airflow Connection holds)."""
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    return Conn(conn_id, base_url(host, schema, port), login or None, password or None,
                dict(extra or {}))  # fmt: skip


def from_uri(conn_id: str, uri: str) -> Conn:
    """A Conn from Airflow's URI form: type://login:secret@host:port/path?extra=..."""
    u = urlsplit(uri)
    scheme = "http" if u.scheme == "http" else "https"
    host = None
    if u.hostname:
        host = f"{scheme}://{u.hostname}" + (f":{u.port}" if u.port else "") + u.path.rstrip("/")
    return Conn(
        conn_id,
        host,
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.password else None,
        dict(parse_qsl(u.query)),
    )


def from_env(conn_id: str) -> Conn:
    """The connection `conn_id` from AIRFLOW_CONN_<CONN_ID>; a clear error when it is not set."""
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = os.environ.get(var)
    if not raw:
        raise LookupError(
            f"connection {conn_id!r} is not set: export {var} (URI or JSON), "
            "or run inside Airflow where it is a stored connection"
        )
    if not raw.lstrip().startswith("{"):
        return from_uri(conn_id, raw)
    d = json.loads(raw)
    return from_fields(conn_id, host=d.get("host"), schema=d.get("schema"), port=d.get("port"),
                       login=d.get("login"), password=d.get("password"),
                       extra=d.get("extra"))  # fmt: skip
