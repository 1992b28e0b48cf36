"""Speed to lead on the Mixpanel emulator: processing times, the export delay and the sandbox clock.

Driven through mixpanel-utils 2.2.7 (which passes `where` as Mixpanel documents it) and plain
HTTP, per docs/mixpanel.md §12: every stored event carries `mp_processing_time_ms`; an event is
exported only once the sandbox clock is `mixpanel_export_delay_s` past it; a `where` on it selects
exactly the events processed since a watermark, from a per-day index that must give the full
scan's answer.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from mixpanel_utils import MixpanelUtils

from sandbox import mixpanel

DAY = date(2025, 3, 1)
MIDNIGHT = datetime(2025, 3, 1, tzinfo=UTC)
MIDNIGHT_S = int(MIDNIGHT.timestamp())
EXPORT = "/api/2.0/export"
PT = "mp_processing_time_ms"


def mp_client(state) -> MixpanelUtils:
    creds = state.credentials["mixpanel"]
    client = MixpanelUtils(
        creds["secret"], service_account_username=creds["username"], project_id=creds["project_id"]
    )
    client.raw_api = client.formatted_api = f"{state.base_url}/api"
    return client


def set_clock(state, when: datetime) -> None:
    """Move the sandbox clock to `when` through the control API, as a benchmark does."""
    offset = (when - datetime.now(UTC)).total_seconds()
    response = requests.post(f"{state.base_url}/_sandbox/settings", json={"clock_offset_s": offset})
    assert response.json()["clock_offset_s"] == offset


def day_events(n: int = 600, seed: int = 7) -> list[dict]:
    """A day of events every ~2 minutes, processed 0.2 s to 10 min later (a few much later),
    stored out of processing order; every fifth one comes without a processing time."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        t = MIDNIGHT_S + i * 86400 // n
        props = {"time": t, "distinct_id": f"u_{i % 17}", "$insert_id": f"ins-{i:04d}"}
        if i % 5:
            lag = rng.randrange(200, 600_000) if rng.random() > 0.05 else rng.randrange(10**7)
            props[PT] = t * 1000 + lag
        events.append({"event": rng.choice(["Logged In", "Page Viewed"]), "properties": props})
    rng.shuffle(events)
    return events


def processed_ms(event: dict) -> int:
    props = event["properties"]
    return props.get(PT, props["time"] * 1000)


def ids(lines: list[dict]) -> list[str]:
    return [line["properties"]["$insert_id"] for line in lines]


@pytest.fixture
def events(sandbox) -> list[dict]:
    seeded = day_events()
    mixpanel.write_events(sandbox, seeded)
    return seeded


def export(state, where: str | None = None, **params) -> list[dict] | None:
    params = {"from_date": f"{DAY}", "to_date": f"{DAY}", **params}
    if where:
        params["where"] = where
    return mp_client(state).query_export(params)


def answered(state, **params) -> bool:
    """Whether mixpanel-utils got an export: on a 4xx it returns None from its request and then
    fails reading it (docs/mixpanel.md §9)."""
    try:
        export(state, **params)
    except AttributeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Stored processing times
# ---------------------------------------------------------------------------------------------


def test_writers_fill_missing_processing_time_from_time(sandbox, events):
    before = json.dumps(events)
    path = mixpanel.event_file(sandbox, DAY)
    stored = [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]
    assert json.dumps(events) == before  # the caller's lines are not changed
    assert [e["properties"][PT] for e in stored] == [processed_ms(e) for e in events]
    assert ids(stored) == ids(events)


def test_legacy_project_processing_time_is_true_utc(sandbox):
    """A legacy project stores local wall-clock `time`; processing time stays true UTC."""
    sandbox.settings["mixpanel_project_timezone"] = "America/New_York"
    noon_local = MIDNIGHT_S + 12 * 3600  # 12:00 wall-clock in New York (EST, UTC-5)
    line = {"event": "Signed Up", "properties": {"time": noon_local + 0.25, "distinct_id": "u"}}
    mixpanel.write_events(sandbox, [line])
    (stored,) = gzip.decompress(mixpanel.event_file(sandbox, DAY).read_bytes()).splitlines()
    expected = datetime(2025, 3, 1, 17, 0, 0, 250000, tzinfo=UTC)
    assert json.loads(stored)["properties"][PT] == int(expected.timestamp() * 1000)


def test_every_world_line_carries_a_processing_time():
    from sandbox import world

    spec = world.WorldSpec(seed=5, start=DAY, days=3, users=20, accounts=5)
    lines = [line for u in world.users(spec) for line in world.events(spec, u)]
    lines += list(world.anonymous_events(spec))
    assert lines and all(
        line["properties"][PT] >= line["properties"]["time"] * 1000 for line in lines
    )


# ---------------------------------------------------------------------------------------------
# The where filter on mp_processing_time_ms (mixpanel-utils)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hour", [0, 7, 13, 23])
def test_where_processing_time_returns_the_lines_since_the_watermark(sandbox, events, hour):
    watermark = int((MIDNIGHT + timedelta(hours=hour)).timestamp() * 1000) + 123
    got = export(sandbox, f'properties["{PT}"] >= {watermark}')
    expected = [e for e in events if processed_ms(e) >= watermark]
    assert 0 < len(expected) < len(events)
    assert ids(got) == ids(expected)  # file order, like the full scan
    assert all(e["properties"][PT] >= watermark for e in got)


def test_where_processing_time_window_and_bounds(sandbox, events):
    pts = sorted(processed_ms(e) for e in events)
    low, high = pts[100], pts[160]
    cases = {
        f'properties["{PT}"] >= {low} and properties["{PT}"] < {high}': lambda v: low <= v < high,
        f'properties["{PT}"] > {low} and properties["{PT}"] <= {high}': lambda v: low < v <= high,
        f'{high} >= properties["{PT}"] and {low} < properties["{PT}"]': lambda v: low < v <= high,
        f'properties["{PT}"] == {low}': lambda v: v == low,
        f'properties["{PT}"] < {low} or properties["{PT}"] > {high}': (
            lambda v: not low <= v <= high
        ),
        f'number(properties["{PT}"]) >= {high}': lambda v: v >= high,
        f'properties["{PT}"] >= {low}.5': lambda v: v >= low + 0.5,
        f'properties["{PT}"] >= {high} and properties["{PT}"] < {low}': lambda v: False,
    }
    for where, keep in cases.items():
        got = export(sandbox, where)
        assert ids(got) == ids([e for e in events if keep(processed_ms(e))]), where


def test_where_processing_time_combines_with_event_filter_limit_and_time_in_ms(sandbox, events):
    watermark = int((MIDNIGHT + timedelta(hours=20)).timestamp() * 1000)
    where = f'properties["{PT}"] >= {watermark} and properties["distinct_id"] != "u_3"'
    got = export(sandbox, where, event=["Page Viewed"], time_in_ms="true", limit=7)
    expected = [
        e
        for e in events
        if processed_ms(e) >= watermark
        and e["event"] == "Page Viewed"
        and e["properties"]["distinct_id"] != "u_3"
    ][:7]
    assert ids(got) == ids(expected)
    assert [g["properties"]["time"] for g in got] == [
        e["properties"]["time"] * 1000 for e in expected
    ]


# ---------------------------------------------------------------------------------------------
# The export delay and the sandbox clock
# ---------------------------------------------------------------------------------------------


def test_export_delay_hides_fresh_events_until_the_clock_passes_them(sandbox, events):
    sandbox.settings["mixpanel_export_delay_s"] = 60
    watermark = int((MIDNIGHT + timedelta(hours=9)).timestamp() * 1000)
    since = f'properties["{PT}"] >= {watermark}'
    noon = MIDNIGHT + timedelta(hours=12)
    set_clock(sandbox, noon)
    seen_ms = (noon - timedelta(seconds=60)).timestamp() * 1000

    got = export(sandbox, since)
    assert ids(got) == ids([e for e in events if watermark <= processed_ms(e) <= seen_ms])
    assert ids(export(sandbox)) == ids([e for e in events if processed_ms(e) <= seen_ms])
    fresh = [e for e in events if seen_ms < processed_ms(e) <= seen_ms + 3_600_000]
    assert fresh and not set(ids(fresh)) & set(ids(got))

    set_clock(sandbox, noon + timedelta(hours=1))  # the same question an hour later
    later = export(sandbox, since)
    assert set(ids(fresh)) <= set(ids(later))
    assert ids(later) == ids([e for e in events if watermark <= processed_ms(e) <= seen_ms + 3.6e6])

    set_clock(sandbox, MIDNIGHT + timedelta(days=2))
    assert ids(export(sandbox)) == ids(events)


def test_sandbox_clock_is_real_time_plus_the_offset(sandbox):
    assert sandbox.settings["clock_offset_s"] == 0
    assert abs(sandbox.now() - datetime.now(UTC)) < timedelta(seconds=1)
    assert sandbox.now().tzinfo is not None and sandbox.now().utcoffset() == timedelta(0)
    set_clock(sandbox, MIDNIGHT)
    assert abs(sandbox.now() - MIDNIGHT) < timedelta(seconds=1)
    sandbox.settings["clock_offset_s"] = 3600
    assert abs(sandbox.now() - datetime.now(UTC) - timedelta(hours=1)) < timedelta(seconds=1)


def test_to_date_later_than_today_follows_the_sandbox_clock(sandbox, events):
    creds = sandbox.credentials["mixpanel"]
    auth = (creds["username"], creds["secret"])

    def status(to_date: date) -> requests.Response:
        params = {"from_date": f"{DAY}", "to_date": f"{to_date}", "project_id": creds["project_id"]}
        return requests.get(sandbox.base_url + EXPORT, params=params, auth=auth)

    set_clock(sandbox, MIDNIGHT + timedelta(hours=23, minutes=59))
    assert status(DAY).status_code == 200
    refused = status(DAY + timedelta(days=1))
    assert refused.status_code == 400
    assert "to_date cannot be later than today" in refused.json()["error"]
    assert not answered(sandbox, to_date=f"{DAY + timedelta(days=1)}")

    set_clock(sandbox, MIDNIGHT + timedelta(days=1))
    assert status(DAY + timedelta(days=1)).status_code == 200

    real_tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    set_clock(sandbox, datetime.now(UTC) + timedelta(days=1))
    assert status(real_tomorrow).status_code == 200


def test_rate_windows_run_on_the_sandbox_clock(sandbox, events):
    sandbox.settings["mixpanel_queries_per_hour"] = 2
    set_clock(sandbox, MIDNIGHT + timedelta(hours=12))
    assert [answered(sandbox, limit=1) for _ in range(3)] == [True, True, False]
    set_clock(sandbox, MIDNIGHT + timedelta(hours=13, seconds=1))  # an hour later
    assert answered(sandbox, limit=1)


# ---------------------------------------------------------------------------------------------
# The index gives the full scan's answer
# ---------------------------------------------------------------------------------------------


def odd_lines(rng: random.Random) -> list[str]:
    """Stored lines the index must not get wrong, written verbatim."""
    base = MIDNIGHT_S * 1000 + 40_000_000
    return [
        f'{{"event":"Signed Up","properties":{{"time":{MIDNIGHT_S},"mp_processing_',  # split
        f'time_ms":{base}}}}}',
        json.dumps({"event": "S", "properties": {"time": MIDNIGHT_S, PT: str(base + 5)}}),
        json.dumps({"event": "B", "properties": {"time": MIDNIGHT_S, PT: True}}),
        json.dumps({"event": "N", "properties": {"time": MIDNIGHT_S, PT: None}}),
        json.dumps({"event": "F", "properties": {"time": MIDNIGHT_S, PT: base + 0.5}}),
        json.dumps({"event": "H", "properties": {"time": MIDNIGHT_S, PT: 2**60 + 1}}),
        json.dumps({"event": "D", "properties": {"x": {PT: base}, "time": MIDNIGHT_S}}),
        f'{{"event":"K","properties":{{"{PT}":1,"time":{MIDNIGHT_S},"{PT}":{base + 9}}}}}',
        json.dumps({"event": "L", "properties": [1, 2]}),
        json.dumps(["not", "an", "object"]),
        "",
        "   ",
        json.dumps({"event": "E", "properties": {}}),
        json.dumps({"event": "Z", "properties": {"time": MIDNIGHT_S, PT: base + rng.randrange(9)}}),
    ]


def full_scan(state, query: mixpanel.ExportQuery, cutoff_ms: float) -> list[bytes]:
    """The reference: every stored line parsed and selected, no catalog and no index."""
    out = []
    for day in query.days:
        path = mixpanel.event_file(state, day)
        if not path.exists():
            continue
        with open(path, "rb") as f:
            for raw in mixpanel._lines_of(f):
                if (line := mixpanel._select_line(raw, query, cutoff_ms)) is not None:
                    out.append(line)
    return out[: query.limit] if query.limit else out


def random_where(rng: random.Random, pts: list[float]) -> str:
    def bound() -> str:
        value = rng.choice(pts) + rng.choice([0, 0, 1, -1, 0.5])
        return str(int(value) if value == int(value) else value)

    def term() -> str:
        op = rng.choice([">=", ">", "<", "<=", "=="])
        prop = rng.choice([f'properties["{PT}"]', f'number(properties["{PT}"])'])
        return f"{bound()} {op} {prop}" if rng.random() < 0.2 else f"{prop} {op} {bound()}"

    extra = rng.choice(["", ' and properties["distinct_id"] != "u_2"', " and not (1 == 2)"])
    shape = rng.randrange(4)
    if shape == 0:
        return term() + extra
    if shape == 1:
        return f"{term()} and {term()}{extra}"
    if shape == 2:
        return f"({term()} and {term()}) or {term()}"
    return f'{term()} or properties["$insert_id"] == "ins-0005"'


def test_indexed_exports_equal_the_full_scan(sandbox):
    rng = random.Random(2026)
    events = day_events(3000, seed=3)
    with mixpanel.DayWriter(sandbox) as writer:
        for i, event in enumerate(events):
            writer.write(event)
            if i % 400 == 0:
                for text in odd_lines(rng):
                    writer.write_raw(DAY, text)
    pts = [processed_ms(e) for e in events]
    for i in range(200):
        if i == 100:  # the second half without the writer's catalog: built by parsing the day
            for sidecar in (mixpanel.event_file(sandbox, DAY).parent / ".index").iterdir():
                sidecar.unlink()
            mixpanel._CACHE.clear()
        params = {"from_date": f"{DAY}", "to_date": f"{DAY}", "where": random_where(rng, pts)}
        if i % 3 == 0:
            params["limit"] = str(rng.randrange(1, 200))
        if i % 4 == 0:
            params["event"] = '["Page Viewed","S","Signed Up"]'
        if i % 5 == 0:
            params["time_in_ms"] = "true"
        query = mixpanel.parse_export_query(params, DAY)
        now = MIDNIGHT + timedelta(seconds=rng.randrange(0, 2 * 86400))
        cutoff = mixpanel.export_cutoff_ms(sandbox, now)
        expected = full_scan(sandbox, query, cutoff)
        assert list(mixpanel.export_lines(sandbox, query, now)) == expected, params
        scanned = dataclasses.replace(query, processing_range=None)  # the catalog-only path
        assert list(mixpanel.export_lines(sandbox, scanned, now)) == expected, params


def test_index_follows_the_day_file(sandbox, events):
    where = f'properties["{PT}"] >= {MIDNIGHT_S * 1000}'
    assert len(export(sandbox, where)) == len(events)
    late = {"event": "Logged In", "properties": {"time": MIDNIGHT_S + 5, "$insert_id": "late"}}
    late["properties"][PT] = (MIDNIGHT_S + 86000) * 1000
    mixpanel.write_events(sandbox, [late], append=True)
    assert ids(export(sandbox, where)) == [*ids(events), "late"]
    threshold = (MIDNIGHT_S + 86000) * 1000
    expected = [*ids([e for e in events if processed_ms(e) >= threshold]), "late"]
    assert ids(export(sandbox, f'properties["{PT}"] >= {threshold}')) == expected
    mixpanel.write_events(sandbox, events[:3])  # the day replaced: three events left
    assert ids(export(sandbox, where)) == ids(events[:3])


def test_processing_time_export_reads_only_the_window(sandbox, monkeypatch):
    """The index is what makes a 5-minute poll cheap: only the window's lines are parsed."""
    events = day_events(20_000, seed=11)
    mixpanel.write_events(sandbox, events, index=True)
    assert (mixpanel.event_file(sandbox, DAY).parent / ".index" / f"{DAY}.bypt").exists()
    assert mixpanel.index_day(sandbox, DAY) and not mixpanel.index_day(sandbox, date(2020, 1, 1))
    parsed = []
    select = mixpanel._select_line
    monkeypatch.setattr(
        mixpanel, "_select_line", lambda raw, *a: parsed.append(raw) or select(raw, *a)
    )
    watermark = int((MIDNIGHT + timedelta(hours=15)).timestamp() * 1000)
    where = f'properties["{PT}"] >= {watermark} and properties["{PT}"] < {watermark + 300_000}'
    got = export(sandbox, where)
    expected = [e for e in events if watermark <= processed_ms(e) < watermark + 300_000]
    assert ids(got) == ids(expected)
    assert len(parsed) == len(expected) < 200


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (f'properties["{PT}"] >= 5', (5.0, float("inf"))),
        (f'5 < properties["{PT}"]', (5.0, float("inf"))),
        (f'properties["{PT}"] >= 5 and properties["{PT}"] < 9', (5.0, 9.0)),
        (f'properties["{PT}"] >= 5 and properties["x"] == 1', (5.0, float("inf"))),
        (f'properties["{PT}"] == 7 or properties["{PT}"] <= 3', (float("-inf"), 7.0)),
        (f'(properties["{PT}"] > 5) and (number(properties["{PT}"]) < 6)', (5.0, 6.0)),
        (f'properties["{PT}"] >= 5 or properties["x"] == 1', None),
        (f'not properties["{PT}"] >= 5', None),
        (f'properties["{PT}"] != 5', None),
        (f'properties["{PT}"] >= "5"', None),
        (f'string(properties["{PT}"]) >= 5', None),
        (f'defined(properties["{PT}"])', None),
        ('properties["time"] >= 5', None),
    ],
)
def test_compile_where_processing_range(expression, expected):
    assert mixpanel.compile_where(expression).processing_range == expected


def test_compile_where_processing_range_holds_large_integers():
    low, high = mixpanel.compile_where(f'properties["{PT}"] == {2**60 + 1}').processing_range
    assert low <= 2**60 + 1 <= high
