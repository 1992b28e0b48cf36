"""Amplitude extraction against the sandbox emulator: upload-day partitions, dedup, faults."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
import requests

from pql.config import AmplitudeSource
from pql.events import amplitude as amp
from pql.http import CredentialsError
from pql.lake import Lake
from sandbox import amplitude as sbx

DAY = date(2026, 10, 5)
NOW = datetime(2026, 10, 7, 12, tzinfo=UTC)  # everything in the window is exportable


def _t(day: date, h: int, m: int = 0) -> str:
    return f"{day:%Y-%m-%d} {h:02d}:{m:02d}:00.123456"


def _event(uuid, insert_id, event_time, uploaded, user="u1", device="d1", **props):
    return {
        "uuid": uuid,
        "$insert_id": insert_id,
        "event_type": "Core Feature Used",
        "event_time": event_time,
        "server_upload_time": uploaded,
        "user_id": user,
        "device_id": device,
        "event_properties": props,
        "user_properties": {"email": "Ana@Acme.io"} if user else {},
        "groups": {"company_id": ["acct_9"]},
        "app": 187520,
    }


def _seed(state):
    prev = DAY - timedelta(days=1)
    with sbx.HourWriter(state) as w:
        w.write(_event("a", "i1", _t(DAY, 9), _t(DAY, 9, 1)))
        w.write(_event("a", "i1", _t(DAY, 9), _t(DAY, 9, 1)))  # the same stored event twice
        w.write(_event("b", "i1", _t(DAY, 9), _t(DAY, 15), device="d2"))  # other device: kept
        # Uploaded on DAY though it happened two days earlier (an offline client).
        w.write(_event("c", "i2", _t(DAY - timedelta(days=2), 8), _t(DAY, 23, 59)))
        w.write(_event("d", None, _t(prev, 22), _t(prev, 23), user=None, device="anon"))
        w.write_raw(datetime(2026, 10, 5, 10, tzinfo=UTC), "{broken")
        w.write_raw(
            datetime(2026, 10, 5, 10, tzinfo=UTC),
            json.dumps({"uuid": "x", "event_type": "X", "device_id": "d"}),
        )


def _session(state, secret=None):
    creds = sbx.credentials(state)
    s = requests.Session()
    s.auth = (creds["api_key"], secret or creds["secret_key"])
    return s


def _extract(state, lake, first=DAY - timedelta(days=1), last=DAY, secret=None, now=NOW):
    return amp.extract_window(
        _session(state, secret),
        lake,
        AmplitudeSource(kind="amplitude", bad_line_threshold=0.5),
        base=state.base_url,
        first=first,
        last=last,
        email_properties=["email"],
        account_properties=["company_id"],
        now=now,
        sleep=lambda s: None,
    )


def test_counts_partitions_and_identity(sandbox, tmp_path):
    _seed(sandbox)
    lake = Lake(tmp_path)
    result = _extract(sandbox, lake)
    assert (result["raw"], result["canonical"], result["duplicates"], result["quarantined"]) == (
        7,
        4,
        1,
        2,
    )
    day = pd.read_parquet(lake.events("amplitude", DAY)).set_index("event_id", drop=False)
    assert sorted(day["device_id"]) == ["d1", "d1", "d2"]
    late = day[day["ts"].dt.date == DAY - timedelta(days=2)].iloc[0]
    assert late["event_id"] == "i2"  # partitioned by upload day, timed by event time
    first = day.iloc[0]
    assert (first["email"], first["account_key"], first["user_key"]) == (
        "ana@acme.io",
        "acct_9",
        "u1",
    )
    assert str(day["ts"].min()) == "2026-10-03 08:00:00.123456+00:00"
    prev = pd.read_parquet(lake.events("amplitude", DAY - timedelta(days=1)))
    assert list(prev["user_key"]) == ["$device:anon"]
    with gzip.open(lake.quarantine("amplitude", DAY) / "lines.jsonl.gz", "rt") as f:
        reasons = sorted(json.loads(x)["reason"] for x in f)
    assert reasons == ["missing or unparsable event_time", "not valid JSON"]


def test_rerun_and_overlap_count_once(sandbox, tmp_path):
    _seed(sandbox)
    lake = Lake(tmp_path)
    _extract(sandbox, lake)
    _extract(sandbox, lake, first=DAY, last=DAY + timedelta(days=1))
    total = sum(
        len(pd.read_parquet(lake.events("amplitude", DAY + timedelta(days=d)))) for d in (-1, 0, 1)
    )
    assert total == 4


def test_recent_hours_are_not_asked_for(sandbox, tmp_path):
    _seed(sandbox)
    lake = Lake(tmp_path)
    early = datetime(2026, 10, 5, 14, tzinfo=UTC)  # hours from 11:00 on are not ready yet
    result = _extract(sandbox, lake, now=early)
    assert result["canonical"] == 2  # the anonymous visit and the 09:01 upload
    with pytest.raises(amp.ExportError, match="not exportable yet"):
        _extract(sandbox, lake, first=DAY + timedelta(days=3), last=DAY + timedelta(days=3))


def test_too_large_windows_are_split(sandbox, tmp_path):
    _seed(sandbox)
    sandbox.settings["amplitude_max_bytes"] = 900  # about one hour's archive
    result = _extract(sandbox, Lake(tmp_path))
    assert result["canonical"] == 4
    assert len(list((Lake(tmp_path).raw("amplitude", DAY)).glob("*.zip"))) > 1


def test_faults_and_credentials(sandbox, tmp_path):
    _seed(sandbox)
    sandbox.queue_fault("amplitude", 429)
    sandbox.queue_fault("amplitude", 503)
    assert _extract(sandbox, Lake(tmp_path))["canonical"] == 4
    sandbox.queue_fault("amplitude", sbx.CORRUPT_FAULT)
    assert _extract(sandbox, Lake(tmp_path / "b"))["canonical"] == 4  # fetched again, whole
    sandbox.queue_fault("amplitude", sbx.CORRUPT_FAULT, 2)
    again = _extract(sandbox, Lake(tmp_path / "b"))  # a broken member is never quarantined
    assert (again["canonical"], again["quarantined"], again["fetch_retries"]) == (4, 2, 2)
    assert sandbox.take_fault("amplitude") is None
    with pytest.raises(CredentialsError, match="refused the credentials"):
        _extract(sandbox, Lake(tmp_path / "c"), secret="nope")
