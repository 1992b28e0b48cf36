"""Conformance of the Amplitude Export API emulator, driven through Airflow's HttpHook.

Follows docs/amplitude.md: zip of per-upload-hour gzip JSON-lines members (§5), selection by
`server_upload_time` with both ends inclusive (§3), the availability delay (§4), and the
documented status codes (§8). Data is small and written with the emulator's own storage helpers.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import uuid
import zipfile
from datetime import UTC, date, datetime, timedelta
from itertools import islice

import pytest
import requests
from airflow.providers.http.hooks.http import HttpHook

from sandbox import amplitude, world
from sandbox.state import SandboxState

EXPORT = "/api/2/export"
DAY = {"start": "20250301T00", "end": "20250301T23"}
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}")
TIMESTAMP_FIELDS = (
    "event_time",
    "client_event_time",
    "client_upload_time",
    "server_received_time",
    "server_upload_time",
    "processed_time",
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def make_event(tag: str, uploaded: datetime, happened: datetime | None = None) -> dict:
    """A minimal export event; `tag` goes into the uuid and $insert_id for readable asserts."""
    happened = happened or uploaded - timedelta(seconds=2)

    def fmt(t: datetime) -> str:
        return amplitude.format_time(int(t.timestamp() * 1000))

    return {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, tag)),
        "$insert_id": tag,
        "event_type": "Core Feature Used",
        "event_time": fmt(happened),
        "server_upload_time": fmt(uploaded),
        "user_id": "u_0000001",
        "device_id": "dev-1",
        "event_properties": {"feature": "reports"},
        "user_properties": {},
        "groups": {},
    }


# Upload hours 0, 7, 17 and 23 of 2025-03-01, one event just after that day, and a late event:
# it happened on 2025-02-20 but was uploaded at 07:30 on 2025-03-01.
SEEDED = [
    make_event("a0", at("2025-03-01T00:00:05")),
    make_event("a1", at("2025-03-01T00:59:59.999")),
    make_event("b0", at("2025-03-01T07:10:00")),
    make_event("late", at("2025-03-01T07:30:00"), happened=at("2025-02-20T08:00:00")),
    make_event("c0", at("2025-03-01T17:00:00")),
    make_event("d0", at("2025-03-01T23:59:59")),
    make_event("e0", at("2025-03-02T00:00:01")),
]


@pytest.fixture
def creds(sandbox) -> dict:
    return amplitude.credentials(sandbox)


@pytest.fixture
def seeded(sandbox) -> list[dict]:
    amplitude.write_events(sandbox, SEEDED)
    return SEEDED


@pytest.fixture
def hook_for(sandbox, monkeypatch):
    """Build an HttpHook whose connection (a JSON env var) carries the given Basic credentials."""

    def make(login: str, password: str) -> HttpHook:
        conn = {"conn_type": "http", "host": sandbox.base_url, "login": login, "password": password}
        monkeypatch.setenv("AIRFLOW_CONN_AMPLITUDE_TEST", json.dumps(conn))
        return HttpHook(method="GET", http_conn_id="amplitude_test")

    return make


@pytest.fixture
def hook(hook_for, creds) -> HttpHook:
    return hook_for(creds["api_key"], creds["secret_key"])


def export(hook: HttpHook, **params) -> requests.Response:
    return hook.run(EXPORT, data=params, extra_options={"stream": True, "check_response": False})


def unzip(response: requests.Response) -> dict[str, list[dict]]:
    """Member name → its events, read the way an extractor must: zip, then gzip, then lines."""
    assert response.status_code == 200, response.text
    body = io.BytesIO()
    for chunk in response.iter_content(64 * 1024):
        body.write(chunk)
    with zipfile.ZipFile(body) as zf:
        return {
            name: [json.loads(line) for line in gzip.decompress(zf.read(name)).splitlines()]
            for name in zf.namelist()
        }


def tags(members: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Member name (without the project folder) → the $insert_ids it holds."""
    return {name.split("/", 1)[1]: [e["$insert_id"] for e in ev] for name, ev in members.items()}


# ---------------------------------------------------------------------------------------------
# Archive layout and selection
# ---------------------------------------------------------------------------------------------


def test_zip_layout_member_names_and_headers(hook, creds, seeded):
    response = export(hook, **DAY)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    body = response.content
    assert body[:4] == b"PK\x03\x04"
    assert int(response.headers["Content-Length"]) == len(body)

    pid = creds["project_id"]
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
    assert names == [f"{pid}/{pid}_2025-03-01_{h}#0.json.gz" for h in (0, 7, 17, 23)]
    assert tags(unzip(export(hook, **DAY))) == {
        f"{pid}_2025-03-01_0#0.json.gz": ["a0", "a1"],
        f"{pid}_2025-03-01_7#0.json.gz": ["b0", "late"],
        f"{pid}_2025-03-01_17#0.json.gz": ["c0"],
        f"{pid}_2025-03-01_23#0.json.gz": ["d0"],
    }


def test_events_are_served_as_stored(hook, seeded):
    served = [e for events in unzip(export(hook, **DAY)).values() for e in events]
    assert served == [e for e in seeded if e["$insert_id"] != "e0"]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("20250301T07", "20250301T07", ["b0", "late"]),  # start == end is one hour
        ("20250301T17", "20250302T00", ["c0", "d0", "e0"]),  # the end hour is included
        ("20250301T01", "20250301T16", ["b0", "late"]),
        ("20250301T7", "20250301T7", ["b0", "late"]),  # one-digit hours, as in old docs
    ],
)
def test_window_is_inclusive_upload_hours(hook, seeded, start, end, expected):
    served = [
        tag for ids in tags(unzip(export(hook, start=start, end=end))).values() for tag in ids
    ]
    assert served == expected


def test_selection_is_by_upload_time_not_event_time(hook, seeded):
    hour7 = [e for e in seeded if e["$insert_id"] == "late"]
    assert hour7[0]["event_time"].startswith("2025-02-20 08:00:00")
    served = unzip(export(hook, start="20250301T07", end="20250301T07"))
    assert hour7[0] in next(iter(served.values()))
    # The day it happened holds nothing: the export never looks at event_time.
    assert export(hook, start="20250220T00", end="20250220T23").status_code == 404


def test_empty_range_is_404(hook, seeded):
    response = export(hook, start="20250301T01", end="20250301T06")
    assert response.status_code == 404
    assert response.text == "No data available for the time range requested"


def test_big_hour_is_split_into_partitions(sandbox, hook, creds):
    sandbox.settings["amplitude_partition_lines"] = 3
    hour = at("2025-03-02T05:00:00")
    events = [make_event(f"p{i}", hour + timedelta(minutes=i)) for i in range(7)]
    amplitude.write_events(sandbox, events)
    pid = creds["project_id"]
    assert tags(unzip(export(hook, start="20250302T05", end="20250302T05"))) == {
        f"{pid}_2025-03-02_5#0.json.gz": ["p0", "p1", "p2"],
        f"{pid}_2025-03-02_5#1.json.gz": ["p3", "p4", "p5"],
        f"{pid}_2025-03-02_5#2.json.gz": ["p6"],
    }


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"start": "20250301T00"},  # no end
        {"start": "2025-03-01", "end": "20250301T23"},
        {"start": "20250301T24", "end": "20250301T23"},
        {"start": "20250230T00", "end": "20250301T23"},
        {"start": "20250301T00", "end": "20250301T5x"},
        {"start": "20250301T05", "end": "20250301T04"},  # end before start
        {"start": "20230101T00", "end": "20240101T00"},  # 365 days and one hour
    ],
)
def test_bad_parameters_are_400(hook, seeded, params):
    response = export(hook, **params)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}


def test_full_year_range_is_allowed(hook, seeded):
    assert export(hook, start="20230101T00", end="20231231T23").status_code == 404


def test_too_large_is_400_and_single_hours_still_pass(sandbox, hook, seeded):
    one_hour = len(export(hook, start="20250301T07", end="20250301T07").content)
    assert len(export(hook, **DAY).content) > one_hour
    sandbox.settings["amplitude_max_bytes"] = one_hour
    too_large = export(hook, **DAY)
    assert too_large.status_code == 400
    assert "too large" in too_large.json()["error"]
    assert export(hook, start="20250301T07", end="20250301T07").status_code == 200
    assert not any((sandbox.root / "tmp").iterdir())  # no archive left behind


@pytest.mark.parametrize(
    ("login", "password"),
    [("wrong-key", "secret"), ("key", "wrong-secret"), ("", "")],
)
def test_bad_credentials_are_401(hook_for, creds, seeded, login, password):
    login = creds["api_key"] if login == "key" else login
    password = creds["secret_key"] if password == "secret" else password
    response = export(hook_for(login, password), **DAY)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_missing_authorization_is_401(sandbox, seeded):
    response = requests.get(f"{sandbox.base_url}{EXPORT}", params=DAY, timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize("status", [403, 429, 503, 504])
def test_injected_faults_then_recovery(sandbox, hook, seeded, status):
    sandbox.queue_fault("amplitude", status)
    failed = export(hook, **DAY)
    assert failed.status_code == status
    assert "error" in failed.json()
    assert export(hook, **DAY).status_code == 200


def test_corrupt_member_fault(sandbox, hook, creds, seeded):
    sandbox.queue_fault("amplitude", amplitude.CORRUPT_FAULT)
    response = export(hook, **DAY)
    assert response.status_code == 200
    pid = creds["project_id"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        assert zf.testzip() is None  # the zip itself is sound
        names = zf.namelist()
        assert names[0] == f"{pid}/{pid}_2025-03-01_0#0.json.gz"
        with pytest.raises((EOFError, gzip.BadGzipFile)):
            gzip.decompress(zf.read(names[0]))
        assert all(gzip.decompress(zf.read(name)) for name in names[1:])
    assert len(unzip(export(hook, **DAY))) == 4  # one request only


def test_zip_cut_fault(sandbox, hook, seeded):
    """The archive is served cut inside its central directory, with a matching length: the
    HTTP transfer is complete, the zip does not open."""
    whole = export(hook, **DAY).content
    sandbox.queue_fault("amplitude", amplitude.ZIP_CUT_FAULT)
    response = export(hook, **DAY)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) < len(whole)
    assert whole.startswith(response.content)
    directory = whole.index(b"PK\x01\x02")  # where the central directory starts
    assert directory < len(response.content)  # cut after the members, inside the directory
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(response.content))
    assert len(unzip(export(hook, **DAY))) == 4  # one request only


# ---------------------------------------------------------------------------------------------
# Availability delay
# ---------------------------------------------------------------------------------------------


def test_recent_hours_are_hidden_until_the_delay_passes(sandbox, hook):
    now = datetime.now(UTC)
    amplitude.write_events(
        sandbox, [make_event("old", now - timedelta(hours=3)), make_event("new", now)]
    )
    window = {
        "start": f"{now - timedelta(hours=4):%Y%m%dT%H}",
        "end": f"{now + timedelta(hours=1):%Y%m%dT%H}",  # the future is allowed, just empty
    }
    served = [t for ids in tags(unzip(export(hook, **window))).values() for t in ids]
    assert served == ["old"]
    sandbox.settings["amplitude_delay_hours"] = 0
    served = [t for ids in tags(unzip(export(hook, **window))).values() for t in ids]
    assert served == ["old", "new"]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2025-03-01T12:05:00", None),  # the hour started after the cutoff: 404
        ("2025-03-01T12:30:00", ["early"]),  # partial: only what is 2 h old
        ("2025-03-01T13:00:00", ["early", "later"]),  # complete 2 h after the hour ended
    ],
)
def test_young_hour_is_partial(sandbox, hook, now, expected):
    amplitude.write_events(
        sandbox,
        [
            make_event("early", at("2025-03-01T10:10:00")),
            make_event("later", at("2025-03-01T10:50")),
        ],
    )
    set_clock(sandbox, at(now))
    response = export(hook, start="20250301T10", end="20250301T10")
    if expected is None:
        assert response.status_code == 404
        assert response.text == "No data available for the time range requested"
    else:
        assert [t for ids in tags(unzip(response)).values() for t in ids] == expected


def set_clock(state: SandboxState, when: datetime) -> None:
    """Move the sandbox clock to `when` through the control API, as a benchmark does."""
    offset = (when - datetime.now(UTC)).total_seconds()
    requests.post(f"{state.base_url}/_sandbox/settings", json={"clock_offset_s": offset})


def served(response: requests.Response) -> list[str]:
    if response.status_code == 404:
        return []
    return [t for ids in tags(unzip(response)).values() for t in ids]


def test_hour_becomes_whole_a_fractional_delay_after_it_ends(sandbox, hook):
    """Speed to lead: with a 15-minute delay, hour 10 is whole at 11:15 and not before."""
    sandbox.settings["amplitude_delay_hours"] = 0.25
    amplitude.write_events(
        sandbox,
        [
            make_event("first", at("2025-03-01T10:00:00")),
            make_event("mid", at("2025-03-01T10:30:00")),
            make_event("last", at("2025-03-01T10:59:59.999")),
        ],
    )
    hour = {"start": "20250301T10", "end": "20250301T10"}
    expected = {
        "2025-03-01T10:14:59": [],  # nothing of the hour is exportable yet: 404
        "2025-03-01T10:15:00": ["first"],
        "2025-03-01T10:45:00": ["first", "mid"],
        "2025-03-01T11:14:59": ["first", "mid"],
        "2025-03-01T11:15:00": ["first", "mid", "last"],  # the hour's end plus the delay
    }
    for now, tags_then in expected.items():
        set_clock(sandbox, at(now))
        assert served(export(hook, **hour)) == tags_then, now


def test_sandbox_clock_drives_the_delay(sandbox, hook):
    """The real clock is hours past these events; moving the sandbox clock back hides them."""
    uploaded = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
    amplitude.write_events(sandbox, [make_event("x", uploaded + timedelta(minutes=5))])
    hour = {"start": f"{uploaded:%Y%m%dT%H}", "end": f"{uploaded:%Y%m%dT%H}"}
    assert served(export(hook, **hour)) == ["x"]
    set_clock(sandbox, uploaded + timedelta(hours=2))  # 5 minutes short of the delay
    assert sandbox.now() < uploaded + timedelta(hours=2, minutes=1)
    assert export(hook, **hour).status_code == 404
    set_clock(sandbox, uploaded + timedelta(hours=3))
    assert served(export(hook, **hour)) == ["x"]


# ---------------------------------------------------------------------------------------------
# Credentials, storage and conversion of the synthetic world
# ---------------------------------------------------------------------------------------------


def test_credentials_are_generated_once_and_persisted(sandbox, creds):
    assert creds["project_id"] == 187520
    assert re.fullmatch(r"[0-9a-f]{32}", creds["api_key"])
    assert re.fullmatch(r"[0-9a-f]{32}", creds["secret_key"])
    assert creds["api_key"] != creds["secret_key"]
    stored = json.loads((sandbox.root / "credentials.json").read_text())
    assert stored["amplitude"] == creds
    assert {"mixpanel", "hubspot"} <= set(stored)  # the other vendors' keys are kept
    reopened = SandboxState.open(sandbox.root)
    assert amplitude.credentials(reopened) == creds
    env = json.loads(
        amplitude.connection_env(sandbox, sandbox.base_url)["AIRFLOW_CONN_AMPLITUDE_DEFAULT"]
    )
    assert (env["login"], env["password"]) == (creds["api_key"], creds["secret_key"])


def test_hour_writer_appends_and_finalizes_atomically(sandbox, hook, creds):
    hour = at("2025-03-01T07:00:00")
    writer = amplitude.HourWriter(sandbox, hour_flush_bytes=1)  # one gzip member per line
    for event in SEEDED:
        writer.write(event)
    writer.write_raw(hour, '{"uuid":"broken-')  # a deliberately broken line passes through
    path = amplitude.hour_file(sandbox, hour)
    assert not path.exists()  # nothing visible before close
    counts = writer.close()
    assert counts[hour] == 3 and sum(counts.values()) == len(SEEDED) + 1
    assert path.name == "2025-03-01T07.jsonl.gz"
    assert path.parent.name == str(creds["project_id"])
    assert not list(path.parent.glob(".*.tmp"))

    amplitude.write_events(sandbox, [make_event("b1", at("2025-03-01T07:59:00"))], append=True)
    response = export(hook, start="20250301T07", end="20250301T07")
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        lines = gzip.decompress(zf.read(zf.namelist()[0])).decode().splitlines()
    assert lines[2] == '{"uuid":"broken-'
    assert [json.loads(x)["$insert_id"] for x in lines[:2] + lines[3:]] == ["b0", "late", "b1"]


def test_hour_writer_discards_on_error(sandbox):
    with pytest.raises(RuntimeError), amplitude.HourWriter(sandbox, hour_flush_bytes=1) as writer:
        writer.write(SEEDED[0])
        raise RuntimeError("generator failed")
    assert amplitude.stored_hours(sandbox) == {}
    assert not any(amplitude.events_folder(sandbox).iterdir())


def world_lines() -> list[dict]:
    spec = world.WorldSpec(
        seed=7, start=date(2025, 3, 1), days=5, users=40, accounts=10, anonymous_visitors=15
    )
    users = list(world.users(spec))
    return [line for u in users for line in world.events(spec, u)] + list(
        world.anonymous_events(spec)
    )


def test_to_amplitude_on_world_lines(sandbox, hook, creds):
    pid = creds["project_id"]
    lines = world_lines()
    rng = random.Random(1)
    events = [amplitude.to_amplitude(line, rng, pid) for line in lines]
    again = random.Random(1)
    assert [amplitude.to_amplitude(line, again, pid) for line in lines] == events  # deterministic

    for line, event in zip(lines, events, strict=True):
        props = line["properties"]
        assert event["event_type"] == line["event"]
        assert event["$insert_id"] == props["$insert_id"]
        assert uuid.UUID(event["uuid"]).version == 4
        assert event["app"] == pid and event["groups"] == {}
        assert all(TIMESTAMP_RE.fullmatch(event[f]) for f in TIMESTAMP_FIELDS)
        event_time = amplitude.parse_time(event["event_time"])
        uploaded = amplitude.parse_time(event["server_upload_time"])
        assert int(event_time.timestamp()) == props["time"]
        assert uploaded - event_time >= timedelta(milliseconds=200)
        assert uploaded <= amplitude.parse_time(event["processed_time"])
        assert event["session_id"] <= event_time.timestamp() * 1000
        if props["distinct_id"].startswith("$device:"):
            assert event["user_id"] is None and event["user_properties"] == {}
            assert event["device_id"] == props["$device_id"]
        else:
            assert event["user_id"] == props["$user_id"]
        assert event["user_properties"].get("email") == props.get("email")
        assert "email" not in event["event_properties"]

    assert len({e["uuid"] for e in events}) == len(events)
    by_user = {}
    for e in events:
        by_user.setdefault(e["user_id"] or e["device_id"], set()).add(e["amplitude_id"])
    assert all(len(ids) == 1 for ids in by_user.values())  # one amplitude_id per user
    lags = [
        amplitude.parse_time(e["server_upload_time"]) - amplitude.parse_time(e["event_time"])
        for e in events
    ]
    assert max(lags) > timedelta(hours=1) > sorted(lags)[len(lags) // 2]  # a few arrive late

    # Through storage and the export: every event comes back, in its upload hour.
    counts = amplitude.write_events(sandbox, events)
    assert sum(counts.values()) == len(events)
    hours = sorted(counts)  # pre-sign-up visits reach back before the world's first day
    served = unzip(export(hook, start=f"{hours[0]:%Y%m%dT%H}", end=f"{hours[-1]:%Y%m%dT%H}"))
    got = {e["uuid"]: (name, e) for name, ev in served.items() for e in ev}
    assert len(got) == len(events)
    for event in islice(events, 0, None, 7):
        name, served_event = got[event["uuid"]]
        hour = amplitude.upload_hour(event)
        assert name == f"{pid}/{pid}_{hour:%Y-%m-%d}_{hour.hour}#0.json.gz"
        assert served_event == event
