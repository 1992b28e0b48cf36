"""Notifications (routing, report delivery, failure alerts): one Slack poster, one e-mail shape,
and one record of what was sent once.

A channel must never act twice for the same thing (a retried task, a re-run DAG): `SentOnce`
keeps (key, channel) pairs in the lake, written at once after each send, so a later failure
keeps what was already done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import requests

from pql import http
from pql.lake import Lake, atomic_dir

SLACK_ATTEMPTS = 4


@dataclass(frozen=True)
class Email:
    to: tuple[str, ...]
    subject: str
    html: str
    attachments: tuple[tuple[str, Path], ...]  # (file name in the email, file in the lake)


def slack_webhook(conn) -> tuple[requests.Session, str]:
    """The Slack poster's (session, webhook URL) for a connection (pql.connections.Conn) whose
    password holds the incoming-webhook URL (the URL is the secret)."""
    url = conn.password or ""
    if not url.startswith(("https://", "http://")):
        raise ValueError(
            f"connection {conn.conn_id!r}: put the Slack incoming-webhook URL "
            "(https://hooks.slack.com/services/...) in its password"
        )
    return http.session(conn), url


def post_slack(session: requests.Session, url: str, text: str) -> None:
    """One message to a Slack incoming webhook (rate limits and 5xx retried with backoff; the
    URL is a secret: never shown in messages)."""
    resp = http.send(session, "POST", url, attempts=SLACK_ATTEMPTS, json={"text": text},
                     timeout=30, secret_url=True)  # fmt: skip
    if resp.status_code != 200:
        raise http.HttpError(f"Slack webhook answered {resp.status_code}: {resp.text[:200]}")


class SentOnce:
    """What a notifier already sent: rows of its key columns, channel, done_at and detail in
    <lake>/sync/<name>/ledger.parquet."""

    def __init__(self, lake: Lake, name: str, keys: list[str]):
        self.lake, self.name, self.keys = lake, name, keys
        self.columns = [*keys, "channel", "done_at", "detail"]
        path = lake.sync(name) / "ledger.parquet"
        self.done = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=self.columns)

    def sent(self, channel: str) -> pd.DataFrame:
        """The key columns of everything sent on `channel`."""
        return self.done.loc[self.done["channel"] == channel, self.keys]

    def record(self, rows: list[tuple], channel: str, now: datetime, detail: str = "") -> None:
        """Note `rows` (tuples of key values) as sent on `channel`, in the lake at once."""
        if not rows:
            return
        fresh = pd.DataFrame([(*r, channel, now, detail) for r in rows], columns=self.columns)
        self.done = pd.concat([self.done, fresh], ignore_index=True) if len(self.done) else fresh
        with atomic_dir(self.lake.sync(self.name)) as tmp:
            self.done.to_parquet(tmp / "ledger.parquet", index=False)
