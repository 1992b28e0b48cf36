"""Credentials for the CLI, read from AIRFLOW_CONN_<ID> environment variables (URI or JSON).

Inside Airflow the hooks read connections themselves; this is the same source outside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass(frozen=True)
class Conn:
    host: str | None
    login: str | None
    password: str | None = field(repr=False)
    extra: dict = field(default_factory=dict)


def from_env(conn_id: str) -> Conn:
    """The connection `conn_id` from AIRFLOW_CONN_<CONN_ID>; a clear error when it is not set."""
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = os.environ.get(var)
    if not raw:
        raise LookupError(
            f"connection {conn_id!r} is not set: export {var} (URI or JSON), "
            "or run inside Airflow where it is a stored connection"
        )
    if raw.lstrip().startswith("{"):
        d = json.loads(raw)
        host = d.get("host")
        if host and "://" not in host and d.get("schema"):
            host = f"{d['schema']}://{host}"
        if host and d.get("port"):
            host = f"{host}:{d['port']}"
        extra = d.get("extra") or {}
        return Conn(
            host,
            d.get("login"),
            d.get("password"),
            json.loads(extra) if isinstance(extra, str) else extra,
        )
    u = urlsplit(raw)
    scheme = "https" if u.scheme in ("https", "hubspot") else "http"
    host = f"{scheme}://{u.hostname}" + (f":{u.port}" if u.port else "") if u.hostname else None
    return Conn(
        host,
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.password else None,
        dict(parse_qsl(u.query)),
    )
