"""Conformance of the Mixpanel emulator, driven through mixpanel-utils 2.2.7 and Airflow's HttpHook.

The data is small and deterministic (three past days, a few dozen events and profiles) and
written with the emulator's own storage helpers.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
import requests
from airflow.providers.http.hooks.http import HttpHook
from mixpanel_utils import MixpanelUtils

from sandbox import mixpanel

DAYS = [date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)]
EVENT_NAMES = ["Signed Up", "Invited Teammate", "Created Project"]
EVENTS_PER_DAY = 12
EXPORT = "/api/2.0/export"
WINDOW = {"from_date": "2025-03-01", "to_date": "2025-03-03"}


def make_events() -> list[dict]:
    """Twelve events per day, spread over the hours, with a few optional properties."""
    events = []
    for d, day in enumerate(DAYS):
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        for i in range(EVENTS_PER_DAY):
            props = {
                "time": midnight + 3600 * i + 17,
                "distinct_id": f"u_{i % 5}",
                "$insert_id": f"ins-{d}-{i:02d}",
                "mp_processing_time_ms": (midnight + 3600 * i + 20) * 1000,
                "plan": "pro" if i % 2 else "free",
            }
            if i % 4 == 0:
                props["coupon"] = "SPRING"
            events.append({"event": EVENT_NAMES[i % 3], "properties": props})
    return events


def make_profiles(n: int = 23) -> list[tuple[str, dict]]:
    return [
        (f"u_{i:03d}", {"$email": f"user{i}@acme.io", "$name": f"User {i}", "plan": "pro"})
        for i in range(n)
    ]


def by_insert_id(events: list[dict]) -> list[dict]:
    return sorted(events, key=lambda e: e["properties"]["$insert_id"])


@pytest.fixture
def events(sandbox) -> list[dict]:
    seeded = make_events()
    mixpanel.write_events(sandbox, seeded)
    return seeded


@pytest.fixture
def creds(sandbox) -> dict:
    return sandbox.credentials["mixpanel"]


def mp_client(state, legacy: bool = False) -> MixpanelUtils:
    """mixpanel-utils pointed at the sandbox (service account unless `legacy`)."""
    creds = state.credentials["mixpanel"]
    if legacy:
        client = MixpanelUtils(creds["secret"])
    else:
        client = MixpanelUtils(
            creds["secret"],
            service_account_username=creds["username"],
            project_id=creds["project_id"],
        )
    client.raw_api = client.formatted_api = f"{state.base_url}/api"
    return client


@pytest.fixture
def hook(sandbox, monkeypatch):
    """Build an HttpHook whose connection (env var) carries the given Basic credentials."""

    def make(user: str, password: str) -> HttpHook:
        port = sandbox.base_url.rsplit(":", 1)[1]
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
        monkeypatch.setenv("AIRFLOW_CONN_MIXPANEL_TEST", f"http://{userinfo}@127.0.0.1:{port}")
        return HttpHook(method="GET", http_conn_id="mixpanel_test")

    return make


@pytest.fixture
def sa_hook(hook, creds) -> HttpHook:
    return hook(creds["username"], creds["secret"])


def hook_export(hook: HttpHook, **params) -> requests.Response:
    return hook.run(EXPORT, data=params, extra_options={"stream": True, "check_response": False})


def sa_params(creds: dict, **params) -> dict:
    return {**WINDOW, "project_id": creds["project_id"], **params}


def json_lines(response: requests.Response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line]


# ---------------------------------------------------------------------------------------------
# mixpanel-utils: export
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("add_gzip_header", [False, True])
def test_query_export_returns_seeded_events(sandbox, events, add_gzip_header):
    got = mp_client(sandbox).query_export(dict(WINDOW), add_gzip_header=add_gzip_header)
    assert by_insert_id(got) == by_insert_id(events)


def test_query_export_window_is_inclusive_project_days(sandbox, events):
    got = mp_client(sandbox).query_export({"from_date": "2025-03-02", "to_date": "2025-03-03"})
    assert {e["properties"]["$insert_id"][:5] for e in got} == {"ins-1", "ins-2"}
    assert len(got) == 2 * EVENTS_PER_DAY


def test_query_export_event_filter_and_time_in_ms(sandbox, events):
    params = {**WINDOW, "event": ["Signed Up", "Created Project"], "time_in_ms": "true"}
    got = mp_client(sandbox).query_export(params)
    expected = [
        {
            "event": e["event"],
            "properties": {**e["properties"], "time": e["properties"]["time"] * 1000},
        }
        for e in events
        if e["event"] in ("Signed Up", "Created Project")
    ]
    assert len(expected) == 24
    assert by_insert_id(got) == by_insert_id(expected)


@pytest.mark.parametrize(
    ("where", "keep"),
    [
        ('properties["plan"] == "pro"', lambda p: p["plan"] == "pro"),
        ('defined(properties["coupon"])', lambda p: "coupon" in p),
        (
            'properties["plan"] == "free" and not defined(properties["coupon"])',
            lambda p: p["plan"] == "free" and "coupon" not in p,
        ),
        (
            'number(properties["mp_processing_time_ms"]) > 1740960000000',
            lambda p: p["mp_processing_time_ms"] > 1740960000000,
        ),
    ],
)
def test_query_export_where(sandbox, events, where, keep):
    got = mp_client(sandbox).query_export({**WINDOW, "where": where})
    expected = [e for e in events if keep(e["properties"])]
    assert 0 < len(expected) < len(events)
    assert by_insert_id(got) == by_insert_id(expected)


def test_query_export_limit_truncates(sandbox, events):
    got = mp_client(sandbox).query_export({**WINDOW, "limit": 5})
    assert len(got) == 5
    assert all(e in events for e in got)


def test_query_export_empty_window_is_empty_body(sandbox, events):
    assert (
        mp_client(sandbox).query_export({"from_date": "2024-01-01", "to_date": "2024-01-31"}) == []
    )


@pytest.mark.parametrize("add_gzip_header", [False, True])
def test_export_events_raw_stream_to_file(sandbox, events, tmp_path, add_gzip_header):
    target = tmp_path / "events.jsonl"
    mp_client(sandbox).export_events(
        str(target), dict(WINDOW), add_gzip_header=add_gzip_header, raw_stream=True
    )
    if add_gzip_header:  # the client names the file .gz and keeps the compressed bytes
        data = (tmp_path / "events.jsonl.gz").read_bytes()
        assert data[:2] == b"\x1f\x8b"
        data = gzip.decompress(data)
    else:
        data = target.read_bytes()
    assert by_insert_id([json.loads(x) for x in data.splitlines()]) == by_insert_id(events)


def test_export_events_request_per_day(sandbox, events, tmp_path):
    mp_client(sandbox).export_events(str(tmp_path / "ev.json"), dict(WINDOW), request_per_day=True)
    for d, day in enumerate(DAYS):
        exported = json.loads((tmp_path / f"ev_{day:%Y-%m-%d}.json").read_text())
        assert by_insert_id(exported) == by_insert_id(events[d * 12 : (d + 1) * 12])


def test_legacy_project_secret_with_mixpanel_utils(sandbox, events):
    assert by_insert_id(mp_client(sandbox, legacy=True).query_export(dict(WINDOW))) == by_insert_id(
        events
    )


# ---------------------------------------------------------------------------------------------
# mixpanel-utils: engage
# ---------------------------------------------------------------------------------------------


def test_query_engage_pages_through_all_profiles(sandbox):
    profiles = make_profiles(23)
    assert mixpanel.upsert_profiles(sandbox, profiles) == 23
    got = mp_client(sandbox).query_engage({"page_size": 5})  # five pages
    assert sorted((p["$distinct_id"], p["$properties"]) for p in got) == profiles


def test_export_people_to_file(sandbox, tmp_path):
    mixpanel.upsert_profiles(sandbox, make_profiles(12))
    target = tmp_path / "people.json"
    mp_client(sandbox).export_people(str(target), {"page_size": 5})
    assert sorted(p["$distinct_id"] for p in json.loads(target.read_text())) == [
        f"u_{i:03d}" for i in range(12)
    ]


def test_query_engage_where_email_and_output_properties(sandbox):
    mixpanel.upsert_profiles(sandbox, make_profiles(23))
    got = mp_client(sandbox).query_engage(
        {"where": 'properties["$email"] == "user7@acme.io"', "output_properties": ["$email"]}
    )
    assert got == [{"$distinct_id": "u_007", "$properties": {"$email": "user7@acme.io"}}]


# ---------------------------------------------------------------------------------------------
# Engage paging contract (plain HTTP form POST, as the current docs describe)
# ---------------------------------------------------------------------------------------------


def test_engage_session_paging_contract(sandbox, creds):
    mixpanel.upsert_profiles(sandbox, make_profiles(7))
    url = f"{sandbox.base_url}/api/query/engage?project_id={creds['project_id']}"
    auth = (creds["username"], creds["secret"])

    first = requests.post(url, data={"page_size": 3}, auth=auth).json()
    assert (first["status"], first["page"], first["page_size"], first["total"]) == ("ok", 0, 3, 7)
    assert [r["$distinct_id"] for r in first["results"]] == ["u_000", "u_001", "u_002"]

    # A profile added mid-session does not shift the session's pages.
    mixpanel.upsert_profiles(sandbox, [("u_0000", {"$email": "early@acme.io"})])
    last = requests.post(
        url, data={"page_size": 3, "page": 2, "session_id": first["session_id"]}, auth=auth
    ).json()
    assert (last["total"], [r["$distinct_id"] for r in last["results"]]) == (7, ["u_006"])

    orphan = requests.post(url, data={"page": 1}, auth=auth)
    assert orphan.status_code == 400
    assert orphan.json()["status"] == "error" and "session_id" in orphan.json()["error"]

    legacy = requests.get(
        f"{sandbox.base_url}/api/2.0/engage",
        params={"distinct_id": "u_003"},
        auth=(creds["secret"], ""),
    ).json()
    assert [r["$distinct_id"] for r in legacy["results"]] == ["u_003"]
    assert legacy["total"] == 1


# ---------------------------------------------------------------------------------------------
# Airflow HttpHook
# ---------------------------------------------------------------------------------------------


def test_http_hook_streams_gzip_export(sa_hook, creds, events):
    response = hook_export(sa_hook, **sa_params(creds))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Content-Encoding"] == "gzip"  # requests asks for gzip by default
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    assert by_insert_id(json_lines(response)) == by_insert_id(events)


def test_http_hook_small_body_is_not_gzipped(sa_hook, creds, events):
    response = hook_export(sa_hook, **sa_params(creds, limit=2))
    assert response.status_code == 200
    assert "Content-Encoding" not in response.headers
    assert len(json_lines(response)) == 2


def test_http_hook_legacy_secret(hook, creds, events):
    response = hook_export(hook(creds["secret"], ""), **WINDOW)
    assert response.status_code == 200
    assert len(json_lines(response)) == len(events)


def test_http_hook_wrong_secret_is_401(hook, creds, events):
    response = hook_export(hook(creds["username"], "not-the-secret"), **sa_params(creds))
    assert response.status_code == 401
    assert "error" in response.json()


def test_service_account_project_id_rules(sa_hook, creds, events):
    missing = hook_export(sa_hook, **WINDOW)
    assert missing.status_code == 400
    assert "project_id" in missing.json()["error"]
    foreign = hook_export(sa_hook, **{**WINDOW, "project_id": 1})
    assert foreign.status_code == 403


def test_http_hook_future_to_date_is_400(sa_hook, creds, events):
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    response = hook_export(sa_hook, **sa_params(creds, to_date=f"{tomorrow}"))
    assert response.status_code == 400
    body = response.json()
    assert "to_date cannot be later than today" in body["error"]
    assert body["request"].startswith(EXPORT + "?") and f"to_date={tomorrow}" in body["request"]


@pytest.mark.parametrize(
    "params",
    [
        {"from_date": "2025-3-1"},
        {"from_date": "2025-03-04"},
        {"event": "Signed Up"},
        {"where": 'properties["plan"] ~ "pro"'},
        {"limit": "100001"},
        {"time_in_ms": "maybe"},
    ],
)
def test_http_hook_bad_parameters_are_400(sa_hook, creds, events, params):
    response = hook_export(sa_hook, **sa_params(creds, **params))
    assert response.status_code == 400
    assert set(response.json()) == {"request", "error"}


@pytest.mark.parametrize("tz", ["Pacific/Kiritimati", "Etc/GMT+12"])
def test_today_follows_project_timezone(sandbox, sa_hook, creds, tz):
    sandbox.settings["mixpanel_project_timezone"] = tz
    local_today = datetime.now(ZoneInfo(tz)).date()
    ok = hook_export(sa_hook, **sa_params(creds, to_date=f"{local_today}"))
    assert ok.status_code == 200
    late = hook_export(sa_hook, **sa_params(creds, to_date=f"{local_today + timedelta(days=1)}"))
    assert late.status_code == 400


def test_http_hook_hourly_rate_limit_is_429(sandbox, sa_hook, creds, events):
    sandbox.settings["mixpanel_queries_per_hour"] = 2
    statuses = [hook_export(sa_hook, **sa_params(creds, limit=1)).status_code for _ in range(2)]
    limited = hook_export(sa_hook, **sa_params(creds))
    assert statuses == [200, 200]
    assert limited.status_code == 429
    body = limited.json()
    assert body["error"].startswith(
        f"Query rate limit exceeded for project_id: {creds['project_id']}."
    )
    assert body["request"].startswith(EXPORT)


def test_per_second_rate_limit_is_429(sandbox, sa_hook, creds, events):
    sandbox.settings["mixpanel_queries_per_second"] = 1
    assert hook_export(sa_hook, **sa_params(creds, limit=1)).status_code == 200
    assert hook_export(sa_hook, **sa_params(creds, limit=1)).status_code == 429


def test_http_hook_injected_503_then_recovers(sandbox, sa_hook, creds, events):
    sandbox.queue_fault("mixpanel", 503)
    failed = hook_export(sa_hook, **sa_params(creds))
    assert failed.status_code == 503
    assert "error" in failed.json()
    assert len(json_lines(hook_export(sa_hook, **sa_params(creds)))) == len(events)


def test_injected_429_has_rate_limit_body(sandbox, sa_hook, creds, events):
    sandbox.queue_fault("mixpanel", 429)
    response = hook_export(sa_hook, **sa_params(creds))
    assert response.status_code == 429
    assert response.json()["error"].startswith("Query rate limit exceeded for project_id:")


def test_http_hook_terminated_early_trailer(sandbox, sa_hook, creds, events):
    sandbox.queue_fault("mixpanel", mixpanel.TRUNCATE_FAULT)
    response = hook_export(sa_hook, **sa_params(creds))
    assert response.status_code == 200
    lines = [line.decode() for line in response.iter_lines() if line]
    assert lines[-1] == "terminated early"
    served = [json.loads(line) for line in lines[:-1]]
    assert len(served) == len(events) // 2
    assert all(e in events for e in served)


# ---------------------------------------------------------------------------------------------
# Storage helpers and the where subset
# ---------------------------------------------------------------------------------------------


def test_day_writer_evicts_appends_and_finalizes_atomically(sandbox):
    events = make_events()
    writer = mixpanel.DayWriter(sandbox, day_flush_bytes=1)  # one gzip member per line
    for event in events[::2] + events[1::2]:
        writer.write(event)
    assert not mixpanel.event_file(sandbox, DAYS[0]).exists()  # nothing visible before close
    assert writer.close() == dict.fromkeys(DAYS, EVENTS_PER_DAY)

    late = {"event": "Signed Up", "properties": {**events[0]["properties"], "$insert_id": "late"}}
    assert mixpanel.write_events(sandbox, [late], append=True) == {DAYS[0]: 1}

    path = mixpanel.event_file(sandbox, DAYS[0])
    assert path.name == "2025-03-01.jsonl.gz"
    assert path.parent.name == str(sandbox.credentials["mixpanel"]["project_id"])
    stored = [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]
    assert by_insert_id(stored) == by_insert_id(events[:EVENTS_PER_DAY] + [late])
    assert not list(path.parent.glob(".*.tmp"))


def test_day_writer_discards_on_error(sandbox):
    folder = mixpanel.event_file(sandbox, DAYS[0]).parent
    with pytest.raises(RuntimeError), mixpanel.DayWriter(sandbox, day_flush_bytes=1) as writer:
        writer.write(make_events()[0])
        assert any(folder.iterdir())  # flushed to a temporary file
        raise RuntimeError("generator failed")
    assert not any(folder.iterdir())


def test_split_records_pass_through_filters(sandbox, sa_hook, creds):
    with mixpanel.DayWriter(sandbox) as writer:
        writer.write(make_events()[1])
        writer.write_raw(DAYS[0], '{"event":"Signed Up","prop')
        writer.write_raw(DAYS[0], 'erties":{"time":1740787200}}')
    response = hook_export(sa_hook, **sa_params(creds, event='["Invited Teammate"]'))
    lines = [line.decode() for line in response.iter_lines() if line]
    assert lines[1:] == ['{"event":"Signed Up","prop', 'erties":{"time":1740787200}}']
    assert json.loads(lines[0])["event"] == "Invited Teammate"


@pytest.mark.parametrize(
    ("expression", "props", "expected"),
    [
        ('properties["a"] == "x"', {"a": "x"}, True),
        ('properties["a"] == "x"', {}, False),
        ('properties["a"] != "x"', {"a": 1}, False),  # mismatched types are undefined
        ('properties["n"] >= 2.5 or properties["a"] == "x"', {"n": 3}, True),
        ('"cme" in properties["company"]', {"company": "acme"}, True),
        ('"acme" in properties["company"]', {"company": ["acme", "globex"]}, True),
        ('not (defined(properties["a"]) and properties["b"] == true)', {"a": 0, "b": True}, False),
        ('string(properties["n"]) == "7"', {"n": 7}, True),
    ],
)
def test_compile_where(expression, props, expected):
    assert mixpanel.compile_where(expression)(props) is expected


@pytest.mark.parametrize("expression", ["", 'properties["a"] ==', 'event == "x"', "properties[a]"])
def test_compile_where_rejects_unsupported(expression):
    with pytest.raises(mixpanel.WhereError):
        mixpanel.compile_where(expression)
