"""Intraday Amplitude extraction against the emulator on the sandbox clock: each upload hour is
asked for once, as soon as Amplitude serves it; no call while no new hour is ready; the daily
run reconciles with the batches and replaces the day."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import requests

from pql.config import AmplitudeSource
from pql.events import amplitude as amp
from pql.events.canonical import intraday_state
from pql.lake import Lake
from sandbox import amplitude as sbx

DAY = date(2026, 10, 5)


def _at(day: date, h: int, m: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, h, m, tzinfo=UTC)


def _event(uuid: str, uploaded: datetime) -> dict:
    t = f"{uploaded:%Y-%m-%d %H:%M:%S}.000000"
    return {"uuid": uuid, "$insert_id": uuid, "event_type": "Core Feature Used",
            "event_time": t, "server_upload_time": t, "user_id": "u1", "device_id": "d1",
            "event_properties": {}, "user_properties": {"email": "ana@acme.io"},
            "groups": {}}  # fmt: skip


def test_each_hour_once_as_soon_as_it_is_exportable(sandbox, tmp_path):
    sandbox.settings["amplitude_delay_hours"] = 2
    uploads = {"early": _at(DAY, 5, 10), "seven": _at(DAY, 7, 30), "nine": _at(DAY, 9, 1),
               "late": _at(DAY, 23, 59)}  # fmt: skip
    with sbx.HourWriter(sandbox) as w:
        for uuid, t in uploads.items():
            w.write(_event(uuid, t))
    creds = sbx.credentials(sandbox)
    session = requests.Session()
    session.auth = (creds["api_key"], creds["secret_key"])
    lake = Lake(tmp_path)
    src = AmplitudeSource(kind="amplitude", availability_delay_hours=2)
    kw = dict(base=sandbox.base_url, email_properties=["email"],
              account_properties=["company_id"], sleep=lambda s: None)  # fmt: skip

    def run(now: datetime) -> dict:
        sandbox.settings["clock_offset_s"] = (now - datetime.now(UTC)).total_seconds()
        return amp.extract_fresh(session, lake, src, now=now, **kw)

    first = run(_at(DAY, 9, 30))  # hours 00..06 are served at 09:30
    assert first["hours"] == ["20261005T00", "20261005T06"] and first["added"] == 1
    second = run(_at(DAY, 11, 5))  # 07 and 08 now
    assert second["hours"] == ["20261005T07", "20261005T08"] and second["added"] == 1
    quiet = run(_at(DAY, 11, 20))  # no new hour: no call at all
    assert "hours" not in quiet and quiet["added"] == 0 and quiet["files"] == []
    assert intraday_state(lake, src.name)["next_hour"] == "20261005T09"
    last = run(_at(DAY + timedelta(days=1), 12))
    assert last["hours"] == ["20261005T09", "20261006T09"] and last["added"] == 2
    held = pd.read_parquet(lake.events(src.name, DAY))
    assert sorted(held["event_id"]) == sorted(uploads)

    daily = amp.extract_window(session, lake, src, first=DAY, last=DAY,
                               now=_at(DAY + timedelta(days=1), 12), **kw)  # fmt: skip
    assert daily["canonical"] == 4
    manifest = json.loads((lake.raw(src.name, DAY) / "manifest.json").read_text())
    assert manifest["intraday"][DAY.isoformat()] == {
        "intraday_files": 3, "intraday_events": 4, "in_daily": 4, "not_in_daily": 0,
        "daily_events": 4, "daily_only": 0,
    }  # fmt: skip
    assert [p.name for p in lake.events(src.name, DAY).glob("*.parquet")] == ["part-0.parquet"]
