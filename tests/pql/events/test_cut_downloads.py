"""A download cut mid-body is never data: it is fetched again, or the run fails naming its window.

Every case runs the real extraction through `sandbox.wire.FaultyProxy` (or an emulator fault)
and compares with a clean run of the same export: the same counts and the same events, or a
failure that leaves no partition behind.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests
from click.testing import CliRunner

from pql import cli
from pql.config import AmplitudeSource, MixpanelSource
from pql.events import ExportError, IncompleteExport, profiles
from pql.events import amplitude as amp
from pql.events import mixpanel as mp
from pql.http import CredentialsError
from pql.lake import Lake, sweep
from sandbox import amplitude as sbx_amp
from sandbox.mixpanel import DayWriter, upsert_profiles
from sandbox.server import connection_env
from sandbox.wire import FaultyProxy

ROOT = Path(__file__).resolve().parents[3]
DAY = date(2026, 10, 5)
CUTS = ["close-cut", "chunked-cut", "length-cut", "reset"]
COUNTS = ("raw", "canonical", "duplicates", "quarantined")


def _t(h: int, m: int, s: int) -> int:
    return int(datetime(DAY.year, DAY.month, DAY.day, h, m, s, tzinfo=UTC).timestamp())


def _seed_mixpanel(state, n: int = 4000) -> None:
    """`n` events over the day (every 50th sent twice) and 4 lines that are not events."""
    with DayWriter(state) as w:
        for i in range(n):
            t = _t(i % 24, i % 60, (i * 7) % 60)
            line = {
                "event": ["Signed Up", "Core Feature Used", "Teammate Invited"][i % 3],
                "properties": {
                    "time": t,
                    "distinct_id": f"u{i % 300}",
                    "$insert_id": f"ins-{i}",
                    "mp_processing_time_ms": t * 1000 + 250,
                    "email": f"user{i % 300}@acme{i % 40}.io",
                    "plan": "pro" if i % 5 else "free",
                },
            }
            w.write(line)
            if i % 50 == 0:
                w.write(line)
        for k in range(4):
            w.write_raw(DAY, '{"event": "cut' + "x" * k)


def _mp_src(state, **kw) -> MixpanelSource:
    return MixpanelSource(
        kind="mixpanel",
        project_id=state.credentials["mixpanel"]["project_id"],
        time_mode="utc",
        **kw,
    )


def _mp_session(state, secret=None) -> requests.Session:
    s = requests.Session()
    creds = state.credentials["mixpanel"]
    s.auth = (creds["username"], secret or creds["secret"])
    return s


def _mp_extract(state, lake, base, secret=None, **src):
    return mp.extract_window(
        _mp_session(state, secret),
        lake,
        _mp_src(state, bad_line_threshold=0.5, **src),
        base=base,
        first=DAY,
        last=DAY,
        email_properties=["email"],
        account_properties=[],
        sleep=lambda s: None,
    )


def _events(lake: Lake, source: str, day: date = DAY) -> pd.DataFrame:
    frame = pd.read_parquet(lake.events(source, day))
    return frame.sort_values(["event_id", "device_id"]).reset_index(drop=True)


def _manifest(lake: Lake, source: str, day: date = DAY) -> dict:
    return json.loads((lake.raw(source, day) / "manifest.json").read_text())


def _nothing_written(lake: Lake, source: str) -> None:
    for area in ("raw", "events", "quarantine"):
        folder = lake.root / area
        assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()], area


@pytest.fixture
def clean_mixpanel(sandbox, tmp_path):
    """The seeded sandbox and the result and events of a clean run (no proxy)."""
    _seed_mixpanel(sandbox)
    lake = Lake(tmp_path / "clean")
    result = _mp_extract(sandbox, lake, sandbox.base_url)
    assert result["raw"] == 4000 + 80 + 4 and result["quarantined"] == 4
    return sandbox, result, _events(lake, "mixpanel")


@pytest.mark.parametrize("mode", CUTS)
def test_a_cut_mixpanel_body_is_fetched_again_to_the_exact_counts(clean_mixpanel, tmp_path, mode):
    state, clean, events = clean_mixpanel
    lake = Lake(tmp_path / "cut")
    with FaultyProxy(state.base_url) as proxy:
        proxy.queue(mode, 2)
        result = _mp_extract(state, lake, proxy.url)
        assert proxy.served == [mode, mode, "close"]
    assert {k: result[k] for k in COUNTS} == {k: clean[k] for k in COUNTS}
    assert result["fetch_retries"] == 2
    pd.testing.assert_frame_equal(_events(lake, "mixpanel"), events)
    fetch = _manifest(lake, "mixpanel")["fetches"]
    assert [(f["window"], f["attempts"], len(f["faults"])) for f in fetch] == [
        (f"{DAY}..{DAY}", 3, 2)
    ]
    assert _manifest(lake, "mixpanel")["reasons"] == {"not valid JSON": 4}  # nothing else


def test_a_whole_body_without_a_length_is_data(clean_mixpanel, tmp_path):
    state, clean, events = clean_mixpanel
    lake = Lake(tmp_path / "close")
    with FaultyProxy(state.base_url) as proxy:
        result = _mp_extract(state, lake, proxy.url)
    assert (result["canonical"], result["fetch_retries"]) == (clean["canonical"], 0)
    pd.testing.assert_frame_equal(_events(lake, "mixpanel"), events)


def test_a_plain_body_cut_inside_a_line_is_fetched_again(sandbox, tmp_path):
    """Mixpanel leaves bodies under 1,400 bytes uncompressed: no gzip checksum to tell a cut."""
    with DayWriter(sandbox) as w:
        for i in range(3):
            w.write({"event": "Signed Up", "properties": {
                "time": _t(9, i, 0), "distinct_id": f"u{i}", "$insert_id": f"p{i}"}})  # fmt: skip
    lake = Lake(tmp_path / "lake")
    with FaultyProxy(sandbox.base_url) as proxy:
        proxy.queue("close-cut", after=0.5)
        result = _mp_extract(sandbox, lake, proxy.url)
    assert (result["raw"], result["canonical"], result["quarantined"]) == (3, 3, 0)
    assert result["fetch_retries"] == 1


def test_a_cut_that_persists_fails_naming_the_window_and_writes_nothing(clean_mixpanel, tmp_path):
    state, _, _ = clean_mixpanel
    lake = Lake(tmp_path / "cut")
    with FaultyProxy(state.base_url) as proxy:
        proxy.queue("close-cut", 3)
        with pytest.raises(IncompleteExport) as err:
            _mp_extract(state, lake, proxy.url, fetch_attempts=3)
    message = str(err.value)
    assert f"Mixpanel export {DAY}..{DAY} of project" in message
    assert "did not arrive whole in 3 attempts" in message and "Nothing was written" in message
    _nothing_written(lake, "mixpanel")
    # A day written before stays exactly as it was.
    good = Lake(tmp_path / "good")
    _mp_extract(state, good, state.base_url)
    before = _events(good, "mixpanel")
    with FaultyProxy(state.base_url) as proxy:
        proxy.queue("reset", 3)
        with pytest.raises(IncompleteExport):
            _mp_extract(state, good, proxy.url, fetch_attempts=3)
    pd.testing.assert_frame_equal(_events(good, "mixpanel"), before)
    assert _manifest(good, "mixpanel")["fetches"][0]["attempts"] == 1
    assert [p.name for p in good.raw("mixpanel", DAY).parent.iterdir()] == [f"date={DAY}"]


def test_terminated_early_is_fetched_again_in_the_http_layer(clean_mixpanel, tmp_path):
    state, clean, events = clean_mixpanel
    lake = Lake(tmp_path / "lake")
    state.queue_fault("mixpanel", 299, 2)  # 'terminated early' after half the export
    result = _mp_extract(state, lake, state.base_url)
    assert (result["canonical"], result["fetch_retries"]) == (clean["canonical"], 2)
    assert "terminated early" in _manifest(lake, "mixpanel")["fetches"][0]["faults"][0]


# --- Amplitude ---------------------------------------------------------------------------------

NOW = datetime(2026, 10, 7, 12, tzinfo=UTC)


def _seed_amplitude(state, n: int = 3000) -> None:
    with sbx_amp.HourWriter(state) as w:
        for i in range(n):
            at = f"{DAY:%Y-%m-%d} {i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.000000"
            w.write({"uuid": f"uuid-{i}", "$insert_id": f"ins-{i}", "event_type": "Used",
                     "event_time": at, "server_upload_time": at, "user_id": f"u{i % 200}",
                     "device_id": f"d{i % 200}", "event_properties": {"n": i},
                     "user_properties": {}, "groups": {}})  # fmt: skip
        w.write_raw(datetime(2026, 10, 5, 10, tzinfo=UTC), "{not json")


def _amp_extract(state, lake, base, secret=None, **src):
    creds = sbx_amp.credentials(state)
    s = requests.Session()
    s.auth = (creds["api_key"], secret or creds["secret_key"])
    return amp.extract_window(
        s,
        lake,
        AmplitudeSource(kind="amplitude", bad_line_threshold=0.5, **src),
        base=base,
        first=DAY,
        last=DAY,
        email_properties=[],
        account_properties=[],
        now=NOW,
        sleep=lambda s: None,
    )


@pytest.fixture
def clean_amplitude(sandbox, tmp_path):
    _seed_amplitude(sandbox)
    sandbox.settings["amplitude_partition_lines"] = 500  # several gzip members per hour
    lake = Lake(tmp_path / "clean")
    result = _amp_extract(sandbox, lake, sandbox.base_url)
    assert (result["raw"], result["canonical"], result["quarantined"]) == (3001, 3000, 1)
    return sandbox, result, _events(lake, "amplitude")


@pytest.mark.parametrize("fault", [*CUTS, "zip-cut", "member-cut"])
def test_a_cut_amplitude_archive_is_fetched_again_to_the_exact_counts(
    clean_amplitude, tmp_path, fault
):
    state, clean, events = clean_amplitude
    lake = Lake(tmp_path / "cut")
    with FaultyProxy(state.base_url) as proxy:
        if fault == "zip-cut":
            state.queue_fault("amplitude", sbx_amp.ZIP_CUT_FAULT, 2)
        elif fault == "member-cut":
            state.queue_fault("amplitude", sbx_amp.CORRUPT_FAULT, 2)
        else:
            proxy.queue(fault, 2)
        result = _amp_extract(state, lake, proxy.url)
    assert {k: result[k] for k in COUNTS} == {k: clean[k] for k in COUNTS}
    assert result["fetch_retries"] == 2
    pd.testing.assert_frame_equal(_events(lake, "amplitude"), events)
    assert _manifest(lake, "amplitude")["fetches"][0]["attempts"] == 3


def test_a_cut_archive_that_persists_fails_naming_the_hours(clean_amplitude, tmp_path):
    state, _, _ = clean_amplitude
    lake = Lake(tmp_path / "cut")
    state.queue_fault("amplitude", sbx_amp.ZIP_CUT_FAULT, 2)
    with pytest.raises(IncompleteExport, match=r"upload hours 20261005T00\.\.20261005T23.*2 att"):
        _amp_extract(state, lake, state.base_url, fetch_attempts=2)
    _nothing_written(lake, "amplitude")


# --- leftovers, messages, the CLI ------------------------------------------------------------


def test_leftovers_of_killed_runs_are_removed_unless_a_live_run_holds_them(
    clean_mixpanel, tmp_path
):
    state, _, _ = clean_mixpanel
    lake = Lake(tmp_path / "lake")
    final = lake.raw("mixpanel", DAY)
    final.parent.mkdir(parents=True)
    old = time.time() - 3600
    dead, live, young = (final.parent / f".tmp-{final.name}-{k}" for k in ("dead", "live", "new"))
    for folder in (dead, live, young):
        (folder / "_staged").mkdir(parents=True)
        (folder / "export.jsonl.gz").write_bytes(b"x" * 1000)
    for folder in (dead, live):
        os.utime(folder, (old, old))
    other_day = final.parent / f".tmp-date={DAY - timedelta(days=1)}-dead"
    other_day.mkdir()
    os.utime(other_day, (old, old))
    holder = os.open(live, os.O_RDONLY)  # another run, alive, writing that folder
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        _mp_extract(state, lake, state.base_url)
        left = sorted(p.name for p in final.parent.iterdir())
        assert left == sorted([final.name, live.name, young.name, other_day.name])
    finally:
        os.close(holder)
    assert sweep(final) == [live]  # once its run is gone; the young one waits its minute


def test_messages_name_the_connection_and_the_project_timezone(clean_mixpanel, tmp_path):
    state, _, _ = clean_mixpanel
    with pytest.raises(CredentialsError, match="connection 'mixpanel_prod'"):
        _mp_extract(state, Lake(tmp_path / "a"), state.base_url, secret="wrong",
                    connection_id="mixpanel_prod")  # fmt: skip
    tomorrow = datetime.now(UTC).date() + timedelta(days=2)
    with pytest.raises(ExportError, match=r"project_timezone 'Europe/Paris'.*Project Settings"):
        mp.extract_window(_mp_session(state), Lake(tmp_path / "b"),
                          _mp_src(state, project_timezone="Europe/Paris"), base=state.base_url,
                          first=tomorrow, last=tomorrow, email_properties=[],
                          account_properties=[], sleep=lambda s: None)  # fmt: skip
    with pytest.raises(CredentialsError, match="connection 'amplitude_default'"):
        _amp_extract(state, Lake(tmp_path / "c"), state.base_url, secret="wrong")


def test_cli_backfill_recovers_and_stats_show_the_retries(clean_mixpanel, tmp_path, monkeypatch):
    state, clean, _ = clean_mixpanel
    config = tmp_path / "pql.yaml"
    config.write_text(
        (ROOT / "config" / "pql.yaml")
        .read_text()
        .replace("root: ../var/lake", f"root: {tmp_path / 'lake'}")
    )
    with FaultyProxy(state.base_url) as proxy:
        for k, v in connection_env(state, proxy.url).items():
            monkeypatch.setenv(k, v)
        proxy.queue("chunked-cut")
        args = ["extract", "--config", str(config), "--from", str(DAY), "--to", str(DAY)]
        res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0, res.output
    assert f"{clean['canonical']:,} canonical" in res.output and "1 fetched again" in res.output
    stats = CliRunner().invoke(cli.main, ["events", "stats", "--config", str(config)],
                               terminal_width=250)  # fmt: skip
    assert stats.exit_code == 0, stats.output
    assert "export_retries" in stats.output
    assert f"fetched again: mixpanel {DAY}..{DAY}: 2 attempts (the body was cut" in stats.output
    with gzip.open(next(Lake(tmp_path / "lake").raw("mixpanel", DAY).glob("*.gz"))) as f:
        assert sum(1 for _ in f) == clean["raw"]  # the raw file kept is the whole export


@pytest.mark.parametrize("mode", ["close-cut", "chunked-cut", "reset"])
def test_a_cut_profile_page_is_asked_again(sandbox, mode):
    """Engage answers JSON pages; a page cut in transit is asked for again, never half read."""
    upsert_profiles(sandbox, [(f"u{i}", {"$email": f"U{i}@acme.io"}) for i in range(300)])
    with FaultyProxy(sandbox.base_url) as proxy:
        proxy.queue(mode)
        found = profiles.fetch_emails(
            _mp_session(sandbox),
            profiles.engage_url("us", proxy.url),
            sandbox.credentials["mixpanel"]["project_id"],
            [f"u{i}" for i in range(300)],
            sleep=lambda s: None,
        )
        assert proxy.served == [mode, "close"]
    assert len(found) == 300 and found["u7"] == "u7@acme.io"
    with pytest.raises(CredentialsError, match="connection 'mixpanel_eu'"):
        url = profiles.engage_url("us", sandbox.base_url)
        profiles.fetch_emails(_mp_session(sandbox, "wrong"), url, 1, ["u1"], conn_id="mixpanel_eu",
                              sleep=lambda s: None)  # fmt: skip
