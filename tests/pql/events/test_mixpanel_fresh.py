"""Intraday Mixpanel extraction against the emulator: only what was processed since the
watermark is added, nothing twice, and the daily run reconciles with the batches and
replaces the day whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import requests

from pql.config import MixpanelSource
from pql.events import mixpanel as mp
from pql.events.canonical import intraday_state
from pql.lake import Lake
from sandbox.mixpanel import DayWriter

OVERLAP = timedelta(minutes=10)


def _session(state):
    s = requests.Session()
    creds = state.credentials["mixpanel"]
    s.auth = (creds["username"], creds["secret"])
    return s


def _line(user: str, t: datetime, insert_id: str, processed: datetime) -> dict:
    return {"event": "Core Feature Used",
            "properties": {"time": int(t.timestamp()), "distinct_id": user,
                           "$insert_id": insert_id,
                           "mp_processing_time_ms": int(processed.timestamp() * 1000)}}  # fmt: skip


def test_batches_add_only_new_events_and_the_daily_run_reconciles(sandbox, tmp_path):
    now = datetime.now(UTC).replace(microsecond=0)
    day0 = datetime(now.year, now.month, now.day, tzinfo=UTC)
    span = max((now - day0).total_seconds(), 3.0)

    def at(frac: float) -> datetime:  # a moment of today before now
        return day0 + timedelta(seconds=int(span * frac))

    lake = Lake(tmp_path / "lake")
    src = MixpanelSource(kind="mixpanel", project_id=sandbox.credentials["mixpanel"]["project_id"],
                         time_mode="utc")  # fmt: skip
    kw = dict(base=sandbox.base_url, overlap=OVERLAP, email_properties=["$email"],
              account_properties=["company_id"], sleep=lambda s: None)  # fmt: skip
    first = [_line(f"u{k}", at(0.1), f"a{k}", at(0.1)) for k in range(40)]
    first.append(first[0])  # the export repeats a line: one event
    with DayWriter(sandbox) as w:
        for line in first:
            w.write(line)
    r1 = mp.extract_fresh(_session(sandbox), lake, src, now=now, **kw)
    assert (r1["raw"], r1["canonical"], r1["duplicates"], r1["added"]) == (41, 40, 1, 40)
    assert r1["watermark_ms"] == int(at(0.1).timestamp() * 1000)

    # Processed later, some of them about earlier moments: all arrive in the next batch,
    # the overlap asks for the first batch again, and none of it is added twice.
    later = [_line(f"v{k}", at(0.05), f"b{k}", at(0.2)) for k in range(25)]
    with DayWriter(sandbox, append=True) as w:
        for line in later:
            w.write(line)
    r2 = mp.extract_fresh(_session(sandbox), lake, src, now=now, **kw)
    assert r2["added"] == 25 and r2["added"] + r2["held_already"] == r2["canonical"]
    assert "where" not in r1 and r2["watermark_ms"] == int(at(0.2).timestamp() * 1000)
    r3 = mp.extract_fresh(_session(sandbox), lake, src, now=now, **kw)
    assert r3["added"] == 0 and r3["files"] == []
    part = lake.events(src.name, day0.date())
    held = pd.read_parquet(part)
    assert len(held) == 65 and held["event_id"].is_unique
    assert len(list(part.glob("intraday-*.parquet"))) == 2
    state = intraday_state(lake, src.name)
    assert state["batches"] == 3 and state["watermark_ms"] == r2["watermark_ms"]

    # The daily run: the day's canonical events are the union of its batches.
    daily = mp.extract_window(_session(sandbox), lake, src, base=sandbox.base_url,
                              first=day0.date(), last=day0.date(), email_properties=["$email"],
                              account_properties=["company_id"], sleep=lambda s: None)  # fmt: skip
    assert daily["canonical"] == 65
    manifest = json.loads((lake.raw(src.name, day0.date()) / "manifest.json").read_text())
    assert manifest["intraday"][day0.date().isoformat()] == {
        "intraday_files": 2, "intraday_events": 65, "in_daily": 65, "not_in_daily": 0,
        "daily_events": 65, "daily_only": 0,
    }  # fmt: skip
    assert sorted(p.name for p in part.glob("*.parquet")) == ["part-0.parquet"]
    assert not (lake.root / "raw" / src.name / "intraday" / f"date={day0.date()}").exists()
    pd.testing.assert_frame_equal(
        pd.read_parquet(part).sort_values("event_id").reset_index(drop=True)[["event_id", "ts"]],
        held.sort_values("event_id").reset_index(drop=True)[["event_id", "ts"]],
    )


def test_many_batches_are_merged_into_one_file(sandbox, tmp_path, monkeypatch):
    from pql.events import canonical

    monkeypatch.setattr(canonical, "MAX_INTRADAY_FILES", 2)
    now = datetime.now(UTC).replace(microsecond=0)
    day0 = datetime(now.year, now.month, now.day, tzinfo=UTC)
    lake = Lake(tmp_path / "lake")
    src = MixpanelSource(kind="mixpanel", project_id=sandbox.credentials["mixpanel"]["project_id"],
                         time_mode="utc")  # fmt: skip
    kw = dict(base=sandbox.base_url, overlap=OVERLAP, email_properties=["$email"],
              account_properties=["company_id"], sleep=lambda s: None)  # fmt: skip
    part = lake.events(src.name, day0.date())
    for batch in range(3):
        t = day0 + (now - day0) * (batch + 1) / 4
        with DayWriter(sandbox, append=batch > 0) as w:
            for k in range(5):
                w.write(_line(f"u{batch}-{k}", t, f"{batch}-{k}", t))
        assert mp.extract_fresh(_session(sandbox), lake, src, now=now, **kw)["added"] == 5
    files = sorted(p.name for p in part.glob("*.parquet"))
    assert len(files) == 1 and files[0].endswith("-merged.parquet")
    held = pd.read_parquet(part)
    assert len(held) == 15 and held["event_id"].is_unique
