"""Bad input: hostile export lines, hostile emails and values, broken configs.

Each gets a clear error or a quarantine, never a crash or a silent drop:

- exports full of hostile lines (fuzzed with hypothesis) go through the real extraction path
  (the sandbox's HTTP export, gzip, DuckDB or Python parsing, partitions, manifest): every line
  becomes an event or a quarantined line with its reason and text, and the counts reconcile;
  tests/pql/events/test_parsers_property.py and test_mixpanel_duckdb.py cover the parsers line
  by line;
- emails and values built to break a CRM call (SOQL injection, quotes, unicode, control
  characters, very long values, case-only duplicates) are written exactly or refused per
  record with the CRM's reason, run after run, without touching anyone else's record;
- broken config files stop with the line and the key at fault.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
import requests
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pql import cli, config
from pql.config import AmplitudeSource, HubSpotTarget, MixpanelSource, SalesforceTarget
from pql.crm import hubspot as crm_hubspot
from pql.crm import salesforce as crm_salesforce
from pql.events import ExportError
from pql.events import amplitude as amp
from pql.events import mixpanel as mp
from pql.events.mixpanel_lines import TRUNCATED_MARKER
from pql.lake import Lake
from sandbox import amplitude as sbx_amplitude
from sandbox.hubspot import HubSpotStore
from sandbox.mixpanel import DayWriter
from sandbox.salesforce import SalesforceStore
from tests.conftest import salesforce_login
from tests.resilience.helpers import (
    expected,
    hubspot_contacts,
    mismatches,
    salesforce_people,
)

DAY = date(2026, 10, 5)
NOON = int(datetime(2026, 10, 5, 12, tzinfo=UTC).timestamp())
NASTY = [
    "'; DROP TABLE events; --",
    '" OR 1=1 --',
    "\\",
    "\\'",
    "\x00",
    "\u202eevil\u202c",
    "\ufeffbom",
    "😀" * 50,
    "a" * 20_000,
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "%s%n%x",
    "ΑΣ İ ǅ ß",
    "\t\x0b\x0c\x1c\x85\u2028",
    "null",
    "{}",
]
# No line breaks (an export is one event per line) and no lone surrogates (not encodable).
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
hostile = st.one_of(st.text(chars, max_size=40), st.sampled_from(NASTY))
nonblank = hostile.filter(lambda s: s.strip() != "")
# Lines that can never be an event: not a JSON object, a cut one, or one missing what it needs.
garbage = st.one_of(
    nonblank.filter(lambda s: not s.lstrip().startswith("{") and s != TRUNCATED_MARKER),
    st.builds(
        lambda v: json.dumps({"event": v})[: max(1, len(json.dumps({"event": v})) // 2)], hostile
    ),  # fmt: skip
    st.builds(lambda v: json.dumps({"properties": {"note": v}}), hostile),
)
EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _quarantined(folder: Path) -> list[dict]:
    path = folder / "lines.jsonl.gz"
    if not path.exists():
        return []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def _reconciled(result: dict, lake: Lake, source: str, good: dict, bad: list[str]) -> None:
    """Every line is an event or a quarantined line with its reason; counts and manifest agree."""
    assert result["raw"] == len(good) + len(bad)
    assert (result["canonical"], result["duplicates"]) == (len(good), 0)
    assert result["quarantined"] == len(bad)
    events = pd.read_parquet(lake.events(source, DAY)) if good else pd.DataFrame()
    assert set(events["event_id"] if good else []) == set(good)
    for row in events.itertuples() if good else []:
        assert json.loads(row.properties)["note"] == good[row.event_id]
    kept = _quarantined(lake.quarantine(source, DAY))
    assert sorted(k["raw"] for k in kept) == sorted(bad)
    assert all(k["reason"] and k["line"] for k in kept)
    manifest = json.loads((lake.raw(source, DAY) / "manifest.json").read_text())
    assert manifest["quarantined"] == len(bad) and sum(manifest["reasons"].values()) == len(bad)


def _mixpanel_event(i: int, v: str) -> str:
    props = {"time": NOON + i, "distinct_id": v or "anon", "$insert_id": f"ins-{i}",
             "$email": v, "company_id": v, "note": v}  # fmt: skip
    return json.dumps({"event": v or "Core Feature Used", "properties": props}, ensure_ascii=False)


@EXAMPLES
@given(values=st.lists(hostile, max_size=15), bad=st.lists(garbage, max_size=8))
def test_mixpanel_export_of_hostile_lines(sandbox, tmp_path, values, bad):
    lines = [_mixpanel_event(i, v) for i, v in enumerate(values)] + bad
    order = sorted(range(len(lines)), key=lambda i: hash(lines[i]))  # events and junk mixed
    with DayWriter(sandbox) as w:
        for i in order:
            w.write_raw(DAY, lines[i])
    creds = sandbox.credentials["mixpanel"]
    session = requests.Session()
    session.auth = (creds["username"], creds["secret"])
    src = MixpanelSource(kind="mixpanel", project_id=creds["project_id"], time_mode="utc",
                         bad_line_threshold=0.3)  # fmt: skip
    lake = Lake(Path(tempfile.mkdtemp(dir=tmp_path)))
    try:
        result = mp.extract_window(session, lake, src, base=sandbox.base_url, first=DAY, last=DAY,
                                   email_properties=["$email"], account_properties=["company_id"],
                                   sleep=lambda s: None)  # fmt: skip
    except ExportError as e:  # too many bad lines: a clear stop, with the lines kept
        assert len(bad) / len(lines) > 0.3
        assert "bad_line_threshold" in str(e) and str(lake.quarantine("mixpanel", DAY)) in str(e)
        assert len(_quarantined(lake.quarantine("mixpanel", DAY))) == len(bad)
        return
    good = {f"ins-{i}": v for i, v in enumerate(values)}
    _reconciled(result, lake, "mixpanel", good, bad)


def _amplitude_event(i: int, v: str) -> str:
    event = {"event_type": v or "Core Feature Used", "event_time": "2026-10-05 09:00:00.123456",
             "server_upload_time": "2026-10-05 10:00:01.000000", "user_id": v,
             "device_id": f"d{i}", "$insert_id": f"ins-{i}", "uuid": f"u-{i}",
             "event_properties": {"note": v}, "user_properties": {"email": v},
             "groups": {"company_id": [v]}}  # fmt: skip
    return json.dumps(event, ensure_ascii=False)


@EXAMPLES
@given(values=st.lists(hostile, max_size=15), bad=st.lists(garbage, max_size=8))
def test_amplitude_export_of_hostile_lines(sandbox, tmp_path, values, bad):
    lines = [_amplitude_event(i, v) for i, v in enumerate(values)] + bad
    with sbx_amplitude.HourWriter(sandbox) as w:
        for line in sorted(lines, key=hash):
            w.write_raw(datetime(2026, 10, 5, 10, tzinfo=UTC), line)
    creds = sbx_amplitude.credentials(sandbox)
    session = requests.Session()
    session.auth = (creds["api_key"], creds["secret_key"])
    lake = Lake(Path(tempfile.mkdtemp(dir=tmp_path)))
    src = AmplitudeSource(kind="amplitude", bad_line_threshold=0.3)
    try:
        result = amp.extract_window(session, lake, src, base=sandbox.base_url, first=DAY,
                                    last=DAY, email_properties=["email"],
                                    account_properties=["company_id"],
                                    now=datetime(2026, 10, 7, tzinfo=UTC),
                                    sleep=lambda s: None)  # fmt: skip
    except ExportError as e:
        assert len(bad) / len(lines) > 0.3
        assert "bad_line_threshold" in str(e) and str(lake.quarantine("amplitude", DAY)) in str(e)
        return
    good = {f"ins-{i}": v for i, v in enumerate(values)}
    _reconciled(result, lake, "amplitude", good, bad)


# --- hostile emails and values into both CRMs ---------------------------------------------------

INJECTION = "x' OR Email != null OR Email = 'victim@acme.io"
EMAILS = [
    "o'brien@acme.io",
    INJECTION,
    "back\\slash@acme.io",
    "ünïcödé@acme.io",
    "a" * 300 + "@acme.io",
    "Dup@Acme.io",
    "dup@acme.io",  # the same CRM record as the one above
    "  padded@acme.io ",
    "new\nline@acme.io",
    "tab\tx@acme.io",
    "percent%_like@acme.io",
    'quote"d@acme.io',
    "😀@acme.io",
    "nul\x00byte@acme.io",
    "",
    None,
]
REASONS = 'said "hi"; DROP TABLE x; -- \' \\ \u202eRTL\u202c ünïcödé 😀 <b>&amp;</b>'


def _hostile_scores() -> pd.DataFrame:
    n = len(EMAILS)
    reasons = [REASONS] * n
    reasons[0] = "é" * 40_000  # over Salesforce's 32,768-character text area, under HubSpot's
    return pd.DataFrame({
        "email": EMAILS, "user_key": [f"u{i}" for i in range(n)], "score": [70] * n,
        "flag": [True] * n, "qualified_at": [pd.Timestamp("2026-10-01 08:30", tz="UTC")] * n,
        "reasons": reasons, "model_version": ["weighted-v1"] * n,
    })  # fmt: skip


def _every_record_accounted_for(lake: Lake, crm: str, result: dict, held: dict, counts) -> set:
    """Each email is written exactly as computed or refused with the CRM's reason; a later run
    sends the refused ones again (and only those). Returns the refused emails."""
    runs = [pd.read_parquet(p / "results.parquet") for p in sorted(lake.sync(crm).glob("run=*"))]
    want = expected(_hostile_scores().drop_duplicates("email", keep="last"), lambda e: e.strip())
    want = {e.strip(): v for e, v in want.items()}
    assert result["skipped_no_email"] == 2  # "" and None, counted
    first, last = runs[0], runs[-1]
    assert sorted(first["email"]) == sorted(want)  # one result per CRM record, nothing dropped
    refused = set(first.loc[first["status"] == "failed", "email"])
    assert (first.loc[first["status"] == "failed", "message"].str.len() > 10).all()
    assert sorted(last["email"]) == sorted(refused if len(runs) > 1 else want)
    written = set(first.loc[first["status"] == "written", "email"])
    assert written, "nothing hostile could be written at all"
    assert not mismatches(held, {e: want[e] for e in written})
    assert set(held) - {"victim@acme.io"} == written
    assert max(counts.values()) == 1
    return refused


def test_hostile_emails_and_values_in_hubspot(sandbox, tmp_path):
    store = HubSpotStore(sandbox)
    hs = crm_hubspot.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)
    target = HubSpotTarget(kind="hubspot", max_failed_share=1)
    lake = Lake(tmp_path)
    crm_hubspot.ensure_properties(hs, target)
    store.upsert("contacts", [{"email": "victim@acme.io", "pql_score": "1"}])
    for attempt in range(2):  # the refused ones are sent again, and refused again
        result = crm_hubspot.sync(hs, lake, target, _hostile_scores())
        held, counts = hubspot_contacts(sandbox)
        _every_record_accounted_for(lake, "hubspot", result, held, counts)
        assert store.get_by("contacts", "email", "victim@acme.io")["properties"]["pql_score"] == "1"
        assert result["written"] == (0 if attempt else len(set(held) - {"victim@acme.io"}))


def test_hostile_emails_and_values_in_salesforce(sandbox, tmp_path):
    store = SalesforceStore(sandbox)
    [victim] = store.create("Lead", [{"LastName": "Victim", "Company": "Acme",
                                      "Email": "victim@acme.io", "PQL_Score__c": 1}])  # fmt: skip
    target = SalesforceTarget(kind="salesforce", max_failed_share=1)
    login = salesforce_login(sandbox)
    lake = Lake(tmp_path)
    for attempt in range(2):
        result = crm_salesforce.sync(login(), lake, target, _hostile_scores(), login=login)
        held, counts = salesforce_people(sandbox)
        _every_record_accounted_for(lake, "salesforce", result, held, counts)
        assert store.get(victim)["PQL_Score__c"] == 1  # the injection matched nobody else
        assert result["created"] == (0 if attempt else len(set(held) - {"victim@acme.io"}))
    res = pd.read_parquet(sorted(lake.sync("salesforce").glob("run=*"))[-1] / "results.parquet")
    why = dict(zip(res["email"], res["message"], strict=True))
    assert "too large" in why["o'brien@acme.io"]  # 40,000 characters of reasons, refused whole
    assert "invalid email" in why[INJECTION.lower()]


def test_soql_literals_escape_every_special_character():
    text = "a'b\\c\"d\ne\rf\tg\bh\fi"
    quoted = crm_salesforce.soql_quote(text)
    assert quoted == "'a\\'b\\\\c\\\"d\\ne\\rf\\tg\\bh\\fi'"
    assert not any(c in quoted for c in "\n\r\t\b\f")


# --- broken configs ------------------------------------------------------------------------------

SHIPPED = (config.DEFAULT_CONFIG).read_text()


def _broken(case: str) -> str | bytes:
    return {
        "tab_indent": SHIPPED.replace("  kind: weighted", "\tkind: weighted", 1),
        "duplicate_section": SHIPPED + "\ncrm:\n  kind: salesforce\n",
        "duplicate_key": SHIPPED.replace("  threshold: 50", "  threshold: 50\n  threshold: 60", 1),
        "not_utf8": SHIPPED.encode().replace(b"weighted-2026.11", b"weighted-\xff\xfe"),
        "wrong_types": SHIPPED.replace("  threshold: 50", "  threshold: [50]", 1),
        "unknown_crm": SHIPPED.replace("\ncrm:\n  kind: hubspot", "\ncrm:\n  kind: pipedrive", 1),
        "huge_number": SHIPPED.replace("  threshold: 50", "  threshold: 1e999", 1),
        "unicode_key": SHIPPED.replace("  threshold: 50", "  thrésh\u202eold: 50", 1),
        "list_at_top": "- a\n- b\n",
        "empty": "",
        "nul_byte": SHIPPED.replace("  threshold: 50", "  threshold: 5\x000", 1),
    }[case]


@pytest.mark.parametrize(
    "case",
    ["tab_indent", "duplicate_section", "duplicate_key", "not_utf8", "wrong_types",
     "unknown_crm", "huge_number", "unicode_key", "list_at_top", "empty", "nul_byte"],
)  # fmt: skip
def test_broken_configs_stop_with_the_line_at_fault(tmp_path, case):
    path = tmp_path / "pql.yaml"
    text = _broken(case)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    problems = err.value.problems
    assert problems
    if case not in ("list_at_top", "empty"):
        assert all(p.startswith("line ") for p in problems), problems
    out = CliRunner().invoke(cli.main, ["validate", "--config", str(path)])
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    assert problems[0] in out.output
