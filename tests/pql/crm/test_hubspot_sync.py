"""HubSpot sync against the sandbox: provisioning, diff, partial failures kept and retried."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pql.config import HubSpotTarget
from pql.crm import hubspot as crm
from pql.lake import Lake
from sandbox.hubspot import HubSpotStore
from tests.conftest import scores_frame as _scores

TARGET = HubSpotTarget(kind="hubspot", max_failed_share=0.5)


@pytest.fixture
def hs(sandbox):
    return crm.client(sandbox.credentials["hubspot"]["access_token"], sandbox.base_url)


def test_provisions_writes_and_skips_unchanged(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    emails = [f"user{i}@acme.io" for i in range(250)]
    first = crm.sync(hs, lake, TARGET, _scores(emails))
    assert (first["written"], first["failed"], first["unchanged"]) == (250, 0, 0)
    store = HubSpotStore(sandbox)
    assert {p["name"] for p in crm.property_specs(TARGET)} <= {
        k for r in store.list("contacts") for k in r["properties"]
    }
    ana = store.get_by("contacts", "email", "user7@acme.io")["properties"]
    assert (ana["pql_score"], ana["pql_flag"], ana["pql_reasons"]) == (
        "70",
        "true",
        "invited 3 teammates",
    )
    assert ana["pql_qualified_at"].startswith("2026-10-01T00:00:00")
    again = crm.sync(hs, lake, TARGET, _scores(emails))
    assert (again["written"], again["unchanged"]) == (0, 250)
    changed = _scores(emails)
    changed.loc[:9, "score"] = 80
    assert crm.sync(hs, lake, TARGET, changed)["written"] == 10
    assert crm.sync(hs, lake, TARGET, changed, dry_run=True)["would_write"] == 0


def test_a_ledger_from_before_the_field_columns_is_read(sandbox, hs, tmp_path):
    """Ledgers once held one JSON text per email (some without a digest): a run on one of
    them sends only what changed, and leaves the ledger in columns."""
    lake = Lake(tmp_path)
    emails = [f"old{i}@acme.io" for i in range(20)]
    crm.sync(hs, lake, TARGET, _scores(emails))
    path = lake.sync("hubspot") / "ledger" / "ledger.parquet"
    now = pd.read_parquet(path)
    fields = sorted(c for c in now.columns if c not in ("email", "digest", "synced_at"))
    old = pd.DataFrame({
        "email": now["email"],
        "values": [json.dumps(dict(zip(fields, r, strict=True)))
                   for r in now[fields].itertuples(index=False, name=None)],
        "digest": now["digest"].where(now.index % 2 == 0),  # half written before digests
        "synced_at": now["synced_at"],
    })  # fmt: skip
    old.to_parquet(path, index=False)
    changed = _scores(emails)
    changed.loc[[0, 1], "score"] = 90
    result = crm.sync(hs, lake, TARGET, changed)
    assert (result["written"], result["unchanged"]) == (2, 18)
    after = pd.read_parquet(path)
    assert "values" not in after.columns and after["digest"].notna().all()
    assert crm.sync(hs, lake, TARGET, changed)["written"] == 0


def test_rejected_records_are_kept_and_retried(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    emails = [f"user{i}@acme.io" for i in range(30)] + ["not-an-email"]
    result = crm.sync(hs, lake, TARGET, _scores(emails))
    assert (result["written"], result["failed"]) == (30, 1)
    run = pd.read_parquet(next(lake.sync("hubspot").glob("run=*")) / "results.parquet")
    bad = run[run["status"] == "failed"].iloc[0]
    assert bad["email"] == "not-an-email" and "invalid" in bad["message"].lower()
    assert "not-an-email" not in set(crm.load_ledger(lake)["email"])
    retry = crm.sync(hs, lake, TARGET, _scores(emails))
    assert (retry["written"], retry["failed"], retry["unchanged"]) == (0, 1, 30)


def test_too_many_failures_fail_the_run(sandbox, hs, tmp_path):
    strict = HubSpotTarget(kind="hubspot", max_failed_share=0.01)
    with pytest.raises(crm.SyncError, match="1 of 3 records were rejected"):
        crm.sync(hs, Lake(tmp_path), strict, _scores(["a@x.io", "b@x.io", "nope"]))


def test_rate_limit_and_server_errors_are_retried(sandbox, hs, tmp_path):
    sandbox.queue_fault("hubspot", 429, 2)
    sandbox.queue_fault("hubspot", 503)
    result = crm.sync(hs, Lake(tmp_path), TARGET, _scores(["a@x.io", "b@x.io"]))
    assert result["written"] == 2
    assert sandbox.take_fault("hubspot") is None


def test_dry_run_cli_shows_old_and_new_values_and_writes_nothing(
    sandbox, hs, tmp_path, monkeypatch
):
    from datetime import date

    from click.testing import CliRunner

    from pql import cli, config
    from sandbox.server import connection_env

    lake = Lake(tmp_path)
    emails = [f"dry{i}@acme.io" for i in range(5)]
    crm.sync(hs, lake, TARGET, _scores(emails))
    later = _scores(emails + ["new@acme.io"])
    later.loc[0, "score"] = 91
    day = date(2026, 10, 2)
    lake.scores(day).mkdir(parents=True)
    later.to_parquet(lake.scores(day) / "scores.parquet", index=False)
    cfg_path = tmp_path / "pql.yaml"
    cfg_path.write_text(
        (config.DEFAULT_CONFIG.read_text()).replace("root: ../var/lake", f"root: {tmp_path}")
    )
    for k, v in connection_env(sandbox, sandbox.base_url).items():
        monkeypatch.setenv(k, v)
    before = HubSpotStore(sandbox).get_by("contacts", "email", "dry0@acme.io")["properties"]
    res = CliRunner().invoke(
        cli.main, ["sync", "--config", str(cfg_path), "--day", str(day), "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    assert "2 would be written, 4 unchanged, nothing sent" in res.output
    assert "dry0@acme.io (update)" in res.output and "pql_score: '70' -> '91'" in res.output
    assert "new@acme.io (new)" in res.output
    after = HubSpotStore(sandbox).get_by("contacts", "email", "dry0@acme.io")["properties"]
    assert (
        after == before and HubSpotStore(sandbox).get_by("contacts", "email", "new@acme.io") is None
    )
    res = CliRunner().invoke(cli.main, ["sync", "--config", str(cfg_path), "--day", str(day)])
    assert res.exit_code == 0, res.output
    assert "2 written, 4 unchanged, 0 failed" in res.output
    assert (
        HubSpotStore(sandbox).get_by("contacts", "email", "dry0@acme.io")["properties"]["pql_score"]
        == "91"
    )


def _crm(sandbox, email):
    return HubSpotStore(sandbox).get_by("contacts", "email", email)["properties"]


@pytest.mark.parametrize("rule", ["overwrite", "keep"])
def test_values_edited_by_hand_in_the_crm_follow_the_rule(sandbox, hs, tmp_path, rule):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"on_manual_edit": rule, "verify": "all"})
    emails = [f"{rule}{i}@acme.io" for i in range(3)]
    crm.sync(hs, lake, target, _scores(emails))
    # A rep overwrites a score by hand (through the API, as the UI does); the computed
    # scores do not change.
    list(crm.upsert_contacts(hs, pd.DataFrame({"email": [emails[0]], "pql_score": ["5"]})))
    same = crm.sync(hs, lake, target, _scores(emails))
    if rule == "overwrite":
        assert (same["edited_in_crm"], same["written"], same["overwritten"]) == (1, 1, 1)
        assert _crm(sandbox, emails[0])["pql_score"] in ("70", "70.0")
    else:
        assert same["written"] == 0
        assert _crm(sandbox, emails[0])["pql_score"] in ("5", "5.0")
    later = crm.sync(hs, lake, target, _scores(emails, score=80))
    if rule == "overwrite":
        assert later["written"] == 3 and later["edited_in_crm"] == 0
        assert _crm(sandbox, emails[0])["pql_score"] in ("80", "80.0")
    else:  # kept for good, not only on the run that noticed it
        assert (later["written"], later["kept_manual_edits"]) == (2, 1)
        assert _crm(sandbox, emails[0])["pql_score"] in ("5", "5.0")
    assert _crm(sandbox, emails[1])["pql_score"] in ("80", "80.0")


def test_edit_check_pages_past_the_search_cap(sandbox, hs, tmp_path, monkeypatch):
    """The overwrite check searches every contact changed since the last run began."""
    from sandbox import hubspot_store

    # HubSpot's 10,000-result cap, scaled down on both sides (the sandbox runs in-process).
    monkeypatch.setattr(crm, "SEARCH_CAP", 400)
    monkeypatch.setattr(hubspot_store, "SEARCH_WINDOW", 400)
    lake = Lake(tmp_path)
    emails = [f"cap{i}@acme.io" for i in range(450)]
    crm.sync(hs, lake, TARGET, _scores(emails))
    edits = pd.DataFrame({"email": [emails[5], emails[440]], "pql_score": ["1", "2"]})
    list(crm.upsert_contacts(hs, edits))
    result = crm.sync(hs, lake, TARGET, _scores(emails))
    assert (result["edited_in_crm"], result["written"]) == (2, 2)
    assert {_crm(sandbox, emails[i])["pql_score"] for i in (5, 440)} <= {"70", "70.0"}


def test_users_missing_from_hubspot_are_skipped_when_not_creating(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    crm.sync(hs, lake, TARGET, _scores(["known@acme.io"]))
    target = TARGET.model_copy(update={"create_missing": False})
    result = crm.sync(hs, lake, target, _scores(["known@acme.io", "new@acme.io"], score=90))
    assert (result["written"], result["not_in_crm"]) == (1, 1)
    assert HubSpotStore(sandbox).get_by("contacts", "email", "new@acme.io") is None
    assert _crm(sandbox, "known@acme.io")["pql_score"] in ("90", "90.0")


def test_unflag_off_keeps_a_lead_flagged_once_written(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"unflag": False})
    crm.sync(hs, lake, target, _scores(["keepflag@acme.io"], score=70))
    crm.sync(hs, lake, target, _scores(["keepflag@acme.io"], score=30))
    held = _crm(sandbox, "keepflag@acme.io")
    assert held["pql_flag"] == "true" and held["pql_score"] in ("30", "30.0")
    lake2 = Lake(tmp_path / "other")
    crm.sync(hs, lake2, TARGET, _scores(["unflag@acme.io"], score=70))
    crm.sync(hs, lake2, TARGET, _scores(["unflag@acme.io"], score=30))
    assert _crm(sandbox, "unflag@acme.io")["pql_flag"] == "false"  # the default: un-flagged


def test_account_qualification_goes_to_companies_by_domain(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    store = HubSpotStore(sandbox)
    store.upsert("companies", [{"domain": f"pqa{i}.io", "name": f"PQA {i}"} for i in range(3)])
    store.upsert("companies", [{"domain": f"other{i}.io", "name": f"O {i}"} for i in range(300)])
    rollup = pd.DataFrame(
        {
            "account_key": ["pqa0.io", "pqa1.io", "pqa2.io", "nocompany.io"],
            "qualified": [True, False, True, True],
            "best_score": [90, 40, 75, 80],
            "reasons": ["3 of 4 active users qualified", "0 of 2", "2 of 3", "1 of 1"],
        }
    )
    first = crm.sync_accounts(hs, lake, TARGET, rollup)
    assert (first["written"], first["not_in_crm"], first["failed"]) == (3, 1, 0)
    # Found by searching their domains: one call, not a listing of every company.
    assert sandbox.counters["hubspot POST /crm/v3/objects/companies/search"] == 1
    assert sandbox.counters.get("hubspot GET /crm/v3/objects/companies", 0) == 0
    held = store.get_by("companies", "domain", "pqa0.io")["properties"]
    assert held["pql_account_qualified"] == "true"
    assert held["pql_account_reasons"] == "3 of 4 active users qualified"
    again = crm.sync_accounts(hs, lake, TARGET, rollup)
    assert again["written"] == 0 and again["unchanged"] == 3  # only the missing one is retried
    rollup.loc[1, ["qualified", "best_score"]] = [True, 60]
    assert crm.sync_accounts(hs, lake, TARGET, rollup)["written"] == 1
    assert store.get_by("companies", "domain", "pqa1.io")["properties"][
        "pql_account_qualified"
    ] == ("true")


def test_a_write_the_crm_did_not_keep_is_caught_by_the_read_back(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"verify": "all"})
    emails = [f"lost{i}@acme.io" for i in range(3)]
    crm.sync(hs, lake, target, _scores(emails))
    # HubSpot answers the next upsert as written, then a workflow reverts it.
    sandbox.queue_fault("hubspot_lost_write", 200)
    with pytest.raises(crm.SyncError, match="3 of 3 records were rejected.*read back differs"):
        crm.sync(hs, lake, target, _scores(emails, score=90))
    assert _crm(sandbox, emails[0])["pql_score"] in ("70", "70.0")
    # Not marked synced: the next run sends them again, and this time they stay.
    again = crm.sync(hs, lake, target, _scores(emails, score=90))
    assert (again["written"], again["failed"]) == (3, 0)
    assert _crm(sandbox, emails[0])["pql_score"] in ("90", "90.0")


def test_a_run_stays_under_the_daily_limit_and_the_rest_goes_next_run(sandbox, hs, tmp_path):
    lake = Lake(tmp_path)
    target = TARGET.model_copy(update={"daily_reserve": 2})
    sandbox.settings["hubspot_daily_limit"] = 12  # of which provisioning takes a few
    emails = [f"d{i}@acme.io" for i in range(1000)]
    first = crm.sync(hs, lake, target, _scores(emails))
    assert first["deferred_daily_limit"] > 0 and first["failed"] == 0
    assert first["written"] + first["deferred_daily_limit"] == 1000
    assert sandbox.counters.get("hubspot 429", 0) == 0  # never ran into HubSpot's refusal
    sandbox.settings["hubspot_daily_limit"] = 1000  # the next day
    second = crm.sync(hs, lake, target, _scores(emails))
    assert (second["written"], second.get("deferred_daily_limit", 0)) == (
        first["deferred_daily_limit"],
        0,
    )
    assert len(crm.load_ledger(lake)) == 1000
