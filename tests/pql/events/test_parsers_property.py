"""Property tests: any line either becomes a canonical event or gets a quarantine reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from pql.events import amplitude, mixpanel_lines

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)
times = st.one_of(st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=5))
props = st.fixed_dictionaries({}, optional={"time": times}) | st.dictionaries(
    st.sampled_from(
        [
            "time",
            "distinct_id",
            "$insert_id",
            "$email",
            "email",
            "company_id",
            "$device_id",
            "mp_processing_time_ms",
            "x",
        ]
    ),
    values,
    max_size=8,
)
mixpanel_export_lines = st.one_of(
    st.text(max_size=80),
    st.builds(lambda e, p: json.dumps({"event": e, "properties": p}), values, props),
)
amplitude_lines = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda d: json.dumps(d),
        st.dictionaries(
            st.sampled_from(
                [
                    "event_type",
                    "event_time",
                    "server_upload_time",
                    "user_id",
                    "device_id",
                    "uuid",
                    "$insert_id",
                    "user_properties",
                    "groups",
                ]
            ),
            values,
            max_size=9,
        ),
    ),
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@settings(max_examples=400, deadline=None)
@given(mixpanel_export_lines)
def test_mixpanel_lines_never_crash(line):
    row, reason = mixpanel_lines.parse_line(
        line, "mixpanel", ["$email", "email"], ["company_id"], NOW
    )
    assert (row is None) != (reason is None)
    if row is not None:
        assert row["event_name"] and row["user_key"] and row["event_id"]
        assert row["ts"].tzinfo is not None
        assert row["email"] is None or row["email"] == row["email"].lower()


@settings(max_examples=400, deadline=None)
@given(amplitude_lines)
def test_amplitude_lines_never_crash(line):
    row, reason = amplitude.parse_line(line, "amplitude", ["email"], ["company_id"])
    assert (row is None) != (reason is None)
    if row is not None:
        assert row["event_name"] and row["user_key"] and row["event_id"]
        assert row["ts"].tzinfo is not None and row["received_at"].tzinfo is not None
