"""Sandbox state: one folder holding credentials, settings, the SQLite CRM store and event files."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import sqlite3
import threading
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_SETTINGS = {
    # The sandbox clock (`SandboxState.now()`) runs this many seconds ahead of the real UTC time
    # (negative: behind). A benchmark moves it to replay a day faster than it really passes.
    "clock_offset_s": 0,
    # HubSpot Free/Starter tier: 100 requests per rolling 10 s, 250k per day; search 5 per second.
    "hubspot_requests_per_10s": 100,
    "hubspot_daily_limit": 250_000,
    "hubspot_search_per_second": 5,
    "hubspot_rate_window_s": 10,  # tests shorten the rolling window to exercise it quickly
    # Mixpanel raw export: 60 queries per hour and 3 per second, per project.
    "mixpanel_queries_per_hour": 60,
    "mixpanel_queries_per_second": 3,
    # An event is exported only once the sandbox clock is this long past its
    # `mp_processing_time_ms` (docs/mixpanel.md §12).
    "mixpanel_export_delay_s": 0,
    # A legacy (pre-2023) project keeps days and `time` in its own zone.
    "mixpanel_project_timezone": "UTC",
    # Company enrichment (Clearbit-style): 600 requests a minute, i.e. 10 in a rolling second.
    "enrichment_rps": 10,
    # Salesforce (Enterprise base: 100k API requests per rolling 24 h, 25 concurrent requests).
    "salesforce_daily_api_requests": 100_000,
    "salesforce_concurrent_requests": 25,
    "salesforce_session_seconds": 7200,  # idle time before 401 INVALID_SESSION_ID
    "salesforce_query_batch_size": 2000,  # records per query page
    "salesforce_bulk_delay_s": 0,  # Bulk 2.0 jobs finish this long after UploadComplete
    "salesforce_lock_rate": 0.0,  # share of record writes failing with UNABLE_TO_LOCK_ROW
    "salesforce_archive_days": 365,  # older Events / closed Tasks only come back from queryAll
    # Network latency: each HubSpot / Salesforce request waits a random 0..N ms before it is
    # handled (0: none). Tests use it to make parallel calls finish out of order.
    "hubspot_latency_ms": 0,
    "salesforce_latency_ms": 0,
    # "salesforce_custom_fields": {"Lead": {"PQL_Score__c": "double", ...}} replaces the default
    # PQL fields of Lead and Contact (see sandbox.salesforce_store.DEFAULT_CUSTOM_FIELDS).
}


def default_state_dir() -> Path:
    """Where the sandbox keeps its state unless PQL_SANDBOX_DIR says otherwise."""
    return Path(os.environ.get("PQL_SANDBOX_DIR", "var/sandbox")).resolve()


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_credentials() -> dict:
    """Random credentials in the vendors' own formats (sandbox only, never real)."""
    return {
        "mixpanel": {
            "project_id": 3141592,
            "username": f"pql-sandbox.{secrets.token_hex(3)}.mp-service-account",
            "secret": secrets.token_urlsafe(24),
        },
        "hubspot": {"access_token": f"pat-na1-{secrets.token_hex(16)}"},
        "enrichment": {"api_key": f"sk_{secrets.token_hex(16)}"},
        "salesforce": {
            "username": f"pql-sandbox.{secrets.token_hex(3)}@example.com",
            "password": secrets.token_urlsafe(12),
            "security_token": "".join(secrets.choice(_ALNUM) for _ in range(24)),
            "client_id": "3MVG9" + "".join(secrets.choice(_ALNUM) for _ in range(80)),
            "client_secret": secrets.token_hex(32).upper(),
        },
    }


class RollingLimiter:
    """Counts calls in a rolling window; `hit()` answers whether a call is still allowed."""

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def hit(self, now: float) -> bool:
        with self._lock:
            if self._calls and self._calls[-1] > now:
                # The sandbox clock was set back: calls "in the future" belong to another run.
                self._calls.clear()
            while self._calls and now - self._calls[0] >= self.window_s:
                self._calls.popleft()
            if len(self._calls) >= self.limit:
                return False
            self._calls.append(now)
            return True

    def remaining(self, now: float) -> int:
        with self._lock:
            live = sum(1 for t in self._calls if now - t < self.window_s)
            return max(0, self.limit - live)


@dataclass
class SandboxState:
    """Everything the emulators share: paths, credentials, settings, limiters and queued faults."""

    root: Path
    credentials: dict
    settings: dict
    base_url: str = ""
    salesforce_url: str = ""  # the TLS listener (simple-salesforce only speaks https)
    limiters: dict[str, RollingLimiter] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)  # requests served, by emulator's name
    _faults: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def db_path(self) -> Path:
        return self.root / "sandbox.db"

    @property
    def events_dir(self) -> Path:
        return self.root / "events"

    @property
    def clock_offset_s(self) -> float:
        """How far the sandbox clock runs ahead of the real time, in seconds."""
        return float(self.settings.get("clock_offset_s") or 0)

    def now(self) -> datetime:
        """The sandbox clock: the real UTC time plus setting `clock_offset_s` (aware, UTC).

        The emulators ask it, not the system clock, what depends on "now" (Mixpanel's today,
        export delay and rate windows; Amplitude's exportable hours), so moving the offset
        (POST /_sandbox/settings) moves them together.
        """
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    @classmethod
    def open(cls, root: Path) -> SandboxState:
        """Open (creating if needed) the state folder at `root`."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        cred_path = root / "credentials.json"
        if not cred_path.exists():
            write_json_private(cred_path, new_credentials())
        settings = dict(DEFAULT_SETTINGS)
        settings_path = root / "settings.json"
        if settings_path.exists():
            settings.update(json.loads(settings_path.read_text()))
        return cls(root=root, credentials=json.loads(cred_path.read_text()), settings=settings)

    def limiter(self, name: str, limit: int, window_s: float) -> RollingLimiter:
        with self._lock:
            lim = self.limiters.get(name)
            if lim is None or lim.limit != limit:
                lim = self.limiters[name] = RollingLimiter(limit, window_s)
            return lim

    def queue_fault(self, target: str, status: int, count: int = 1) -> None:
        """Make the next `count` requests to `target` (e.g. 'hubspot') answer `status`."""
        with self._lock:
            self._faults.setdefault(target, deque()).extend([status] * count)

    def count(self, name: str) -> None:
        """Add one to a request counter (tests read `counters` to see what a client asked)."""
        with self._lock:
            self.counters[name] += 1

    def take_fault(self, target: str) -> int | None:
        with self._lock:
            q = self._faults.get(target)
            return q.popleft() if q else None

    async def latency(self, vendor: str) -> None:
        """Wait as `<vendor>_latency_ms` says (a random 0..N ms), like a slow network would."""
        ms = float(self.settings.get(f"{vendor}_latency_ms") or 0)
        if ms > 0:
            await asyncio.sleep(random.uniform(0, ms) / 1000)

    @contextmanager
    def db(self):
        """A SQLite connection in WAL mode, committed on success."""
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()


_CREDENTIALS_LOCK = threading.Lock()


def vendor_credentials(state: SandboxState, vendor: str) -> dict:
    """A vendor's sandbox credentials, added on first use to sandboxes made before it existed."""
    creds = state.credentials.get(vendor)
    if creds is not None:
        return creds
    with _CREDENTIALS_LOCK:
        path = state.root / "credentials.json"
        stored = json.loads(path.read_text()) if path.exists() else dict(state.credentials)
        creds = stored.get(vendor)
        if creds is None:
            creds = stored[vendor] = new_credentials()[vendor]
            write_json_private(path, stored)
        state.credentials[vendor] = creds
        return creds


def write_json_private(path: Path, data: dict) -> None:
    """Write JSON readable by the owner only, atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
