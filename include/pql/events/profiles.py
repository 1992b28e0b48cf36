"""Emails from Mixpanel profiles (Engage) for users whose events carry none."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import duckdb
import pandas as pd
import requests

from pql.events import ExportError
from pql.http import CredentialsError, send
from pql.lake import Lake, atomic_dir

log = logging.getLogger(__name__)

HOSTS = {
    "us": "https://mixpanel.com",
    "eu": "https://eu.mixpanel.com",
    "in": "https://in.mixpanel.com",
}
IDS_PER_QUERY = 1000  # one Engage page; Engage allows 60 queries an hour


def engage_url(residency: str, host: str | None = None) -> str:
    return f"{(host.rstrip('/') if host else HOSTS[residency])}/api/query/engage"


def fetch_emails(session: requests.Session, url: str, project_id: int, ids: list[str], *,
                 attempts: int = 5, sleep: Callable[[float], None] = time.sleep,
                 conn_id: str = "mixpanel_default") -> dict[str, str]:  # fmt: skip
    """distinct_id → $email for the given ids (those without an email are left out)."""
    found: dict[str, str] = {}
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        form = {"distinct_ids": json.dumps(chunk), "output_properties": '["$email"]'}
        page = 0
        while True:
            body = _post(session, url, project_id, form, attempts, sleep, conn_id)
            for r in body.get("results", []):
                email = (r.get("$properties") or {}).get("$email")
                if isinstance(email, str) and "@" in email:
                    found[str(r["$distinct_id"])] = email.strip().lower()
            page += 1
            if page * int(body.get("page_size") or IDS_PER_QUERY) >= int(body.get("total") or 0):
                break
            form = {**form, "session_id": body["session_id"], "page": page}
    return found


def _post(session, url, project_id, form, attempts, sleep, conn_id) -> dict:
    resp = send(
        session,
        "POST",
        url,
        attempts=attempts,
        sleep=sleep,
        expect_json=True,
        params={"project_id": project_id},
        data=form,
        timeout=120,
    )
    if resp.ok:
        return resp.json()
    if resp.status_code in (401, 403):
        raise CredentialsError(
            f"Mixpanel Engage refused the credentials of connection {conn_id!r} "
            f"({resp.status_code}): {resp.text[:200]}. Check its service-account username/secret."
        )
    raise ExportError(f"Mixpanel Engage answered {resp.status_code}: {resp.text[:300]}")


def profiles_path(lake: Lake, source: str):
    return lake.root / "identity" / source / "profiles.parquet"


def refresh(session: requests.Session, lake: Lake, source: str, url: str, project_id: int,
            **kwargs) -> dict:  # fmt: skip
    """Look up emails for identified users that have none on their events or in the lake yet."""
    path = profiles_path(lake, source)
    events = str(lake.root / "events" / f"source={source}" / "date=*" / "*.parquet")
    known = (
        f"SELECT user_key FROM read_parquet('{path}')"
        if path.exists()
        else "SELECT NULL::VARCHAR AS user_key LIMIT 0"
    )
    with duckdb.connect() as con:
        missing = con.sql(f"""
            SELECT user_key FROM read_parquet('{events}', hive_partitioning = false)
            WHERE user_key NOT LIKE '$device:%'
            GROUP BY user_key HAVING count(email) = 0
            EXCEPT ({known}) ORDER BY user_key""").fetchall()
    ids = [r[0] for r in missing]
    found = fetch_emails(session, url, project_id, ids, **kwargs) if ids else {}
    fresh = pd.DataFrame(
        {"user_key": ids, "email": [found.get(i) for i in ids], "looked_up_at": datetime.now(UTC)}
    )
    # Ids without a profile email are kept too, so they are not asked for again every run.
    merged = pd.concat([pd.read_parquet(path), fresh]) if path.exists() else fresh
    # Text columns stay text when nobody was looked up or no email was found (pandas would
    # write double or null columns, which the feature SQL cannot lower-case).
    merged = merged.astype({"user_key": "string", "email": "string"})
    with atomic_dir(path.parent) as tmp:
        merged.drop_duplicates("user_key", keep="last").to_parquet(tmp / path.name, index=False)
    log.info("profiles: looked up %s users without an email, found %s", len(ids), len(found))
    return {"looked_up": len(ids), "found": len(found)}
