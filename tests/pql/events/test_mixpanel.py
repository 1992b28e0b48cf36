"""Mixpanel extraction against the sandbox emulator: counts reconcile, dedup, quarantine, faults."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
import requests

from pql.config import MixpanelSource
from pql.events import mixpanel as mp
from pql.lake import Lake
from sandbox.mixpanel import DayWriter

DAY = date(2026, 10, 5)


def _line(name, user, t, insert_id, **props):
    return {
        "event": name,
        "properties": {
            "time": t,
            "distinct_id": user,
            "$insert_id": insert_id,
            "mp_processing_time_ms": t * 1000 + 500,
            **props,
        },
    }


def _ts(h, m=0, s=0) -> int:
    return int(datetime(DAY.year, DAY.month, DAY.day, h, m, s, tzinfo=UTC).timestamp())


def _seed(state):
    good = [
        _line("Signed Up", "u1", _ts(9), "a1", email="Ana@Acme.io"),
        _line("Core Feature Used", "u1", _ts(10), "a2", company_id="acct_1"),
        _line("Core Feature Used", "u2", _ts(23, 59, 59), "b1"),  # last second of the day
        _line("Core Feature Used", "u2", _ts(23, 59, 59), "b1"),  # exact duplicate
        _line("Core Feature Used", "u3", _ts(23, 59, 59), "b1"),  # same insert id, other user
    ]
    with DayWriter(state) as w:
        for line in good:
            w.write(line)
        w.write_raw(DAY, "{not json")
        w.write_raw(DAY, json.dumps({"event": "X", "properties": {"distinct_id": "u9"}}))
        w.write_raw(DAY, json.dumps({"event": "X", "properties": {"time": _ts(1)}}))


def _session(state, secret=None):
    s = requests.Session()
    creds = state.credentials["mixpanel"]
    s.auth = (creds["username"], secret or creds["secret"])
    return s


def _src(state, **kw) -> MixpanelSource:
    return MixpanelSource(
        kind="mixpanel",
        project_id=state.credentials["mixpanel"]["project_id"],
        time_mode="utc",
        **kw,
    )


def _extract(state, lake, threshold=0.5, secret=None, first=DAY, last=DAY):
    return mp.extract_window(
        _session(state, secret),
        lake,
        _src(state, bad_line_threshold=threshold),
        base=state.base_url,
        first=first,
        last=last,
        email_properties=["$email", "email"],
        account_properties=["company_id"],
        sleep=lambda s: None,
    )


def test_counts_reconcile_dedup_and_quarantine(sandbox, tmp_path):
    _seed(sandbox)
    lake = Lake(tmp_path / "lake")
    result = _extract(sandbox, lake)
    assert result["raw"] == 8
    assert (result["canonical"], result["duplicates"], result["quarantined"]) == (4, 1, 3)
    events = pd.read_parquet(lake.events("mixpanel", DAY))
    assert sorted(events["user_key"]) == ["u1", "u1", "u2", "u3"]
    signup = events[events["event_name"] == "Signed Up"].iloc[0]
    assert signup["email"] == "ana@acme.io"
    assert str(signup["ts"]) == "2026-10-05 09:00:00+00:00"
    assert events[events["user_key"] == "u2"]["ts"].iloc[0].second == 59
    assert events[events["event_id"] == "a2"]["account_key"].iloc[0] == "acct_1"
    with gzip.open(lake.quarantine("mixpanel", DAY) / "lines.jsonl.gz", "rt") as f:
        bad = [json.loads(x) for x in f]
    assert [(b["line"], b["reason"]) for b in bad] == [
        (6, "not valid JSON"),
        (7, "missing or non-numeric 'time'"),
        (8, "missing distinct_id"),
    ]
    raw = lake.raw("mixpanel", DAY)
    assert (raw / f"export_{DAY}_{DAY}.jsonl.gz").stat().st_size > 0
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["per_day"] == {DAY.isoformat(): 4} and manifest["duplicates"] == 1


def test_rerun_replaces_the_partition(sandbox, tmp_path):
    _seed(sandbox)
    lake = Lake(tmp_path / "lake")
    first = _extract(sandbox, lake)
    before = pd.read_parquet(lake.events("mixpanel", DAY)).drop(columns=["received_at"])
    second = _extract(sandbox, lake)
    after = pd.read_parquet(lake.events("mixpanel", DAY)).drop(columns=["received_at"])
    assert {k: v for k, v in first.items() if k != "raw_bytes"} == {
        k: v for k, v in second.items() if k != "raw_bytes"
    }
    pd.testing.assert_frame_equal(before, after)
    assert len(list(lake.events("mixpanel", DAY).parent.iterdir())) == 1  # no temp folders left


def test_too_many_bad_lines_fails_loudly_but_keeps_them(sandbox, tmp_path):
    _seed(sandbox)
    lake = Lake(tmp_path / "lake")
    with pytest.raises(mp.ExportError, match=r"3 of 8 lines could not be parsed .*threshold"):
        _extract(sandbox, lake, threshold=0.1)
    assert (lake.quarantine("mixpanel", DAY) / "lines.jsonl.gz").exists()


def test_bad_credentials_are_a_clear_error(sandbox, tmp_path):
    _seed(sandbox)
    with pytest.raises(mp.CredentialsError, match="refused the credentials"):
        _extract(sandbox, Lake(tmp_path / "lake"), secret="wrong")


def test_rate_limits_server_errors_and_cut_exports_are_retried(sandbox, tmp_path):
    _seed(sandbox)
    sandbox.queue_fault("mixpanel", 429, 2)
    sandbox.queue_fault("mixpanel", 503)
    sandbox.queue_fault("mixpanel", 299)  # body cut short with 'terminated early'
    result = _extract(sandbox, Lake(tmp_path / "lake"))
    assert (result["raw"], result["canonical"]) == (8, 4)
    assert sandbox.take_fault("mixpanel") is None


def test_lookback_picks_up_late_events_without_double_counting(sandbox, tmp_path):
    lake = Lake(tmp_path / "lake")
    prev = DAY - timedelta(days=1)
    with DayWriter(sandbox) as w:
        w.write(_line("Core Feature Used", "u1", _ts(12) - 86400, "p1"))
        w.write(_line("Core Feature Used", "u1", _ts(12), "d1"))
    _extract(sandbox, lake, first=prev, last=prev)
    _extract(sandbox, lake, first=prev, last=DAY)  # the next run, looking back one day
    with DayWriter(sandbox, append=True) as w:  # a late event for the previous day arrives
        w.write(_line("Core Feature Used", "u2", _ts(13) - 86400, "late"))
    result = _extract(sandbox, lake, first=prev, last=DAY)
    assert (result["raw"], result["canonical"]) == (3, 3)
    prev_events = pd.read_parquet(lake.events("mixpanel", prev))
    assert sorted(prev_events["event_id"]) == ["late", "p1"]
    assert list(pd.read_parquet(lake.events("mixpanel", DAY))["event_id"]) == ["d1"]
    empty = _extract(sandbox, lake, first=DAY + timedelta(days=1), last=DAY + timedelta(days=1))
    assert empty["raw"] == 0
    assert pd.read_parquet(lake.events("mixpanel", DAY + timedelta(days=1))).empty


def test_local_time_projects_are_converted_to_utc(sandbox, tmp_path):
    """Pre-2023 projects export wall-clock seconds in the project zone and local days."""
    lake = Lake(tmp_path / "lake")
    with DayWriter(sandbox) as w:  # 23:30 New York wall-clock on DAY = 03:30 UTC the next day
        w.write(_line("Core Feature Used", "u1", _ts(23, 30), "ny"))
    mp.extract_window(
        _session(sandbox),
        lake,
        MixpanelSource(
            kind="mixpanel",
            project_id=sandbox.credentials["mixpanel"]["project_id"],
            project_created=date(2019, 5, 1),
            project_timezone="America/New_York",
        ),
        base=sandbox.base_url,
        first=DAY,
        last=DAY,
        email_properties=[],
        account_properties=[],
    )
    ts = pd.read_parquet(lake.events("mixpanel", DAY))["ts"].iloc[0]
    assert str(ts) == "2026-10-06 03:30:00+00:00"
