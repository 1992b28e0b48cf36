"""Benchmark: the diff-based Salesforce sync against the sandbox emulator (Bulk API 2.0 path).

    .venv/bin/python bench/crm_sync_salesforce.py                    # 100,000 Contacts, 10% changed
    .venv/bin/python bench/crm_sync_salesforce.py --contacts 20000   # quicker

The sandbox org starts holding `--contacts` Contacts (on 5,000 Accounts) exactly as the last sync
wrote them, seeded straight into the emulator's store, and the sync ledger to match (each
person's Contact and its Account, as a run notes them): the last run was a day ago and wrote 10%
of them (the others date from older runs), and noted the span of Salesforce's clock its writes
lie in, which the next change check goes around (finding no hand edit). Then:

1. 10% of the scores change and `pql.crm.salesforce.sync` runs: those updates are above
   `bulk_threshold`, so they must go out as ONE Bulk API 2.0 ingest job. Printed: jobs created,
   API calls by kind (SOQL queries by purpose, describe, Bulk ingest, Collections, single-record),
   time spent waiting on each, records per second, and the calls against the daily request limit;
   every changed Contact is then checked in the store (no API call) for the new values;
2. the same scores again, right after: an unchanged re-run (what a speed-to-lead run every 5
   minutes usually is) must make no write call and at most 2 calls in all: no field check
   (remembered for a day), one query per object for edits, conversions and new Contacts, around
   the records the last run wrote;
3. the naive way, one `PATCH /sobjects/Contact/<Id>` per changed record, on a sample of the same
   changes (extrapolated per record), in the same process. The naive sync is handed the record
   Ids for free (no lookups), so the ratio flatters it;
4. the competent way without this project, "batch-update everything, no diff": every Contact's
   values sent each run as ONE Bulk API 2.0 update job by Id (through the project's own Bulk
   client code, `wait` and all), on the same changed world (the org put back as yesterday's run
   left it, no API call), then again unchanged, where it still sends everything. At 100,000
   records Bulk API 2.0 is what Salesforce recommends and what a competent engineer would use:
   sObject Collections of 200 would be 500 calls a run. Update, not upsert: Email is no External
   Id field, so an upsert needs a custom one; the Ids are handed for free, as to the naive sync
   (a real job would first find them: a Bulk query or 50 SOQL pages of 2,000), which flatters it.

Printed side by side at the end: the sync's time and calls, each baseline's, and the ratios
(baseline over sync) for the changed run and the unchanged re-run.

Rate limit: unlike HubSpot (100 requests per rolling 10 s, bench/crm_sync.py), Salesforce has no
per-second request limit and neither has its emulator: an org has a rolling 24-hour API request
budget (Enterprise: 100,000 + 1,000 per licence) and 25 concurrent long requests. So there is no
"share of the rate limit" figure here: each run's calls are reported against the daily budget
(the emulator's `salesforce_daily_api_requests`, 100,000 here). The emulator finishes a Bulk job
as soon as it is closed (`salesforce_bulk_delay_s` 0); a real org queues and processes it, which
adds seconds to minutes that are not measured here (`--bulk-delay` emulates some).

Targets: exactly one Bulk API 2.0 ingest job for the updates, and no Collections or single-record
writes beside it; every changed Contact holds its new values; zero write calls and at most 2
calls when unchanged; a run's calls under 1% of the daily budget (this benchmark's yardstick: a
daily sync should leave the org's budget to everything else).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import requests
from crm_sync import counters, scores, side_by_side
from simple_salesforce import Salesforce

from pql.config import SalesforceTarget
from pql.crm import salesforce as crm
from pql.crm.ledger import desired_values, update_ledger
from pql.lake import Lake
from sandbox import server
from sandbox.salesforce import SalesforceStore, credentials, tls_files
from sandbox.state import SandboxState

DAILY = 100_000  # API requests per rolling 24 h (Enterprise base, before per-licence additions)
ACCOUNTS = 5000  # scores() spreads users over company0.io … company4999.io
QUIET = 2  # calls at most for a run with nothing to write

# Emulator endpoint names (counted as "salesforce.<name>") by kind of call.
KINDS = {
    "soql": ("query", "query_all", "query_more"),
    "describe": ("describe", "describe_global", "sobject_info"),
    "collections": (
        "collections_create",
        "collections_update",
        "collections_upsert",
        "collections_delete",
        "collections_retrieve",
    ),
    "single": (
        "sobject_create",
        "sobject_update",
        "sobject_upsert",
        "sobject_delete",
        "sobject_get",
        "sobject_get_by_external_id",
    ),
}
WRITES = {
    "collections_create",
    "collections_update",
    "collections_upsert",
    "collections_delete",
    "sobject_create",
    "sobject_update",
    "sobject_upsert",
    "sobject_delete",
    "bulk_ingest_create",
    "bulk_ingest_upload",
    "bulk_ingest_state",
}


class TimedSession(requests.Session):
    """A requests session that counts the client's calls and the time spent waiting on them, by
    kind; SOQL by purpose (read from the statement; a next page counts with its query)."""

    def __init__(self):
        super().__init__()
        self.seconds: Counter = Counter()
        self.calls: Counter = Counter()
        self._purpose = "other"

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def _kind(self, url: str, params) -> str:
        path = url.partition("/services/data/")[2].partition("?")[0]
        if path.split("/")[1:2] in (["query"], ["queryAll"]):
            soql = (params or {}).get("q") if isinstance(params, dict) else None
            if soql:  # a first page (next pages keep the purpose of their query)
                self._purpose = (
                    "changes" if "IsConverted = true" in soql or "CreatedDate >=" in soql
                    else "read-back" if "WHERE Id IN" in soql
                    else "lookup" if " IN (" in soql
                    else "other"
                )  # fmt: skip
            return f"soql {self._purpose}"
        if "/jobs/ingest" in path:
            return "bulk ingest"
        if path.endswith("/describe"):
            return "describe"
        if "/composite/sobjects" in path:
            return "collections"
        return "single-record" if "/sobjects/" in path else "other"

    def request(self, method, url, *args, **kwargs):
        kind = self._kind(str(url), kwargs.get("params"))
        started = time.perf_counter()
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            self.seconds[kind] += time.perf_counter() - started
            self.calls[kind] += 1


def client(state: SandboxState, instance: str) -> tuple[Salesforce, callable, TimedSession]:
    """A simple-salesforce client on a fresh client-credentials session, the login itself, and
    the session (its calls and seconds by kind)."""
    session = TimedSession()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    session.verify = str(tls_files(state)["ca"])
    creds = credentials(state)

    def login() -> Salesforce:
        token = session.post(
            f"{instance}/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": creds["client_id"],
                "client_secret": creds["client_secret"],
            },
            timeout=30,
        )
        token.raise_for_status()
        return Salesforce(
            instance_url=instance, session_id=token.json()["access_token"], session=session
        )

    return login(), login, session


def seed(
    state: SandboxState, lake: Lake, target: SalesforceTarget, frame: pd.DataFrame, last: int
) -> list[str]:
    """The org and the ledger as syncs of `frame` left them, the last a day ago writing the
    last `last` Contacts -> Contact Ids in `frame` order."""
    desired = desired_values(frame, target)
    now = datetime.now(UTC)
    last_run = now - timedelta(days=1)

    def stamp(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    created, older, latest = stamp(now - timedelta(days=30)), stamp(now - timedelta(days=8)), (
        stamp(last_run + timedelta(minutes=1))
    )  # fmt: skip
    store = SalesforceStore(state)
    account_ids = store.create(
        "Account",
        [{"Name": f"Company {i}", "Website": f"https://company{i}.io"} for i in range(ACCOUNTS)],
    )
    contacts, parents = [], {}
    for i, row in enumerate(desired.to_dict("records")):
        local, _, domain = row["email"].partition("@")
        parents[row["email"]] = account_ids[int(domain.removeprefix("company").split(".")[0])]
        contacts.append(
            {
                "LastName": local,
                "Email": row["email"],
                "AccountId": parents[row["email"]],
                "CreatedDate": created,
                "LastModifiedDate": latest if i >= len(desired) - last else older,
                **crm.wire(row, target),
            }
        )
    ids = []
    for start in range(0, len(contacts), 10_000):
        ids += store.create("Contact", contacts[start : start + 10_000])
    # run_started: where the next run's check for hand edits, conversions and new Contacts
    # starts; ours: the span of Salesforce's clock holding that run's writes (searched around);
    # where and parent: the record holding each person's values and its Account, as the last
    # run noted them.
    where = {e: f"Contact/{i}" for e, i in zip(desired["email"], ids, strict=True)}
    ours = [(last_run + timedelta(seconds=50), last_run + timedelta(seconds=70))]
    update_ledger(lake, None, desired, crm=crm.CRM, run_started=last_run, where=where,
                  columns={"parent": parents}, ours=ours)  # fmt: skip
    return ids


def check_written(state: SandboxState, frame: pd.DataFrame, target: SalesforceTarget) -> int:
    """How many of `frame`'s Contacts hold its values in the org (read from the store: no API)."""
    rows = desired_values(frame, target).to_dict("records")
    want = {r["email"]: crm.wire(r, target) for r in rows}
    fields = list(next(iter(want.values())))
    at = target.fields.qualified_at
    emails, held = list(want), 0
    store = SalesforceStore(state)
    for start in range(0, len(emails), 500):
        quoted = ", ".join(crm.soql_quote(e) for e in emails[start : start + 500])
        for r in store.query(f"SELECT Email, {', '.join(fields)} FROM Contact "
                             f"WHERE Email IN ({quoted})"):  # fmt: skip
            w, got = want[r["Email"].lower()], {k: r[k] for k in fields}
            # The org answers datetimes in its own format: compare to the second.
            w, got = {**w, at: (w[at] or "")[:19]}, {**got, at: (got[at] or "")[:19]}
            held += got == w
    return held


def calls(base_url: str, before: dict) -> dict:
    """API calls the emulator counted since `before`, by kind, and by endpoint (`by_endpoint`)."""
    now = counters(base_url)
    delta = {
        k.removeprefix("salesforce."): now[k] - before.get(k, 0)
        for k in now
        if k.startswith("salesforce.") and not k.split(".", 1)[1].isdigit()
    }
    delta = {k: v for k, v in delta.items() if v}
    kinds = {kind: sum(delta.get(name, 0) for name in names) for kind, names in KINDS.items()}
    kinds["bulk_ingest"] = sum(v for k, v in delta.items() if k.startswith("bulk_ingest_"))
    kinds["bulk_query"] = sum(v for k, v in delta.items() if k.startswith("bulk_query_"))
    kinds["jobs"] = delta.get("bulk_ingest_create", 0)
    kinds["write"] = sum(v for k, v in delta.items() if k in WRITES)
    kinds["total"] = now.get("salesforce", 0) - before.get("salesforce", 0)
    kinds["other"] = kinds["total"] - sum(
        kinds[k] for k in ("soql", "describe", "collections", "single", "bulk_ingest", "bulk_query")
    )
    kinds["by_endpoint"] = delta
    kinds["errors"] = sum(
        now[k] - before.get(k, 0)
        for k in now
        if k.startswith("salesforce.") and k[11:].isdigit() and int(k[11:]) >= 300
    )
    return kinds


def naive(sf: Salesforce, ids: list[str], frame: pd.DataFrame, target: SalesforceTarget) -> float:
    """One PATCH /sobjects/Contact/<Id> per record (Ids given: no lookup is counted)."""
    desired = desired_values(frame, target).to_dict("records")
    started = time.perf_counter()
    for rid, row in zip(ids, desired, strict=True):
        sf.Contact.update(rid, crm.wire(row, target))
    return time.perf_counter() - started


def put(state: SandboxState, ids: list[str], frame: pd.DataFrame, target: SalesforceTarget):
    """`frame`'s values into its Contacts (`ids`, in order) in the store: no API call."""
    rows = desired_values(frame, target).to_dict("records")
    with SalesforceStore(state).transaction() as tx:
        for rid, row in zip(ids, rows, strict=True):
            tx.save("Contact", "update", crm.wire(row, target), record_id=rid, mode="system")


def batch_everything(
    sf: Salesforce, login, ids: list[str], frame: pd.DataFrame, target: SalesforceTarget
) -> tuple[float, int]:
    """Every Contact's values, no diff: one Bulk API 2.0 update job by Id (Ids given), through
    the sync's own Bulk client code -> seconds, records written."""
    started = time.perf_counter()
    rows = desired_values(frame, target).to_dict("records")
    writes = [
        {"email": row["email"], "object": "Contact", "id": rid, "account": None,
         "record": {"attributes": {"type": "Contact"}, "id": rid, **crm.wire(row, target)}}
        for rid, row in zip(ids, rows, strict=True)
    ]  # fmt: skip
    results = crm._bulk(crm.adapter(sf, login, target), writes)
    return time.perf_counter() - started, sum(r["status"] == "written" for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=int, default=100_000)
    ap.add_argument("--changed-share", type=float, default=0.10)
    ap.add_argument("--naive-sample", type=int, default=300)
    ap.add_argument("--bulk-delay", type=float, default=0.0,
                    help="seconds the emulator takes to finish a Bulk job (default 0)")  # fmt: skip
    args = ap.parse_args()
    n, changed = args.contacts, int(args.contacts * args.changed_share)
    target = SalesforceTarget(kind="salesforce")
    with tempfile.TemporaryDirectory(prefix="bench-crm-sf-") as tmp:
        # The sandbox in its own process, as in the demo: in this one it would share the GIL.
        root = Path(tmp) / "sandbox"
        state = SandboxState.open(root)
        settings = {
            "salesforce_daily_api_requests": DAILY,
            "salesforce_bulk_delay_s": args.bulk_delay,
        }
        (root / "settings.json").write_text(json.dumps(settings))
        t = time.perf_counter()
        lake = Lake(Path(tmp) / "lake")
        ids = seed(state, lake, target, scores(n), last=changed)
        print(f"seeded {n:,} Contacts on {ACCOUNTS:,} Accounts and the ledger in "
              f"{time.perf_counter() - t:.0f} s")  # fmt: skip
        info = server.start(root)
        base = info["base_url"]
        try:
            sf, login, session = client(state, info["salesforce_url"])

            today = scores(n, changed)
            before = counters(base)
            session.reset()
            t = time.perf_counter()
            result = crm.sync(sf, lake, target, today, login=login)
            seconds = time.perf_counter() - t
            run = calls(base, before)
            mine = {k: (session.calls[k], session.seconds[k]) for k in session.calls}
            held = check_written(state, today.head(changed), target)
            print(f"\nsync, {changed:,} of {n:,} changed (bulk_threshold "
                  f"{target.bulk_threshold:,}): {result['written']:,} written via "
                  f"{result['api']}, {result['unchanged']:,} unchanged, {result['failed']} "
                  f"failed, {result['created']} created in {seconds:.1f} s")  # fmt: skip
            print(f"  Bulk API 2.0 ingest jobs created: {run['jobs']}")
            print(f"  API calls: {run['total']} = {run['soql']} SOQL queries, "
                  f"{run['describe']} describe, {run['bulk_ingest']} Bulk ingest job calls, "
                  f"{run['collections']} Collections, {run['single']} single-record, "
                  f"{run['bulk_query'] + run['other']} other; {run['errors']} errors")  # fmt: skip
            print("  by endpoint: " + ", ".join(f"{k} {v}" for k, v in run["by_endpoint"].items()))
            waited = sum(s for _, s in mine.values())
            slowest = sorted(mine.items(), key=lambda kv: -kv[1][1])
            print("  calls and seconds waiting, by purpose: " + ", ".join(
                f"{k} {c} ({s:.1f} s)" for k, (c, s) in slowest
            ) + f"; {seconds - waited:.1f} s in this process (diff, comparisons, CSV, "
                f"ledger, and the Bulk client's first {crm.BULK_WAIT_S} s wait)")  # fmt: skip
            print(f"  {held:,} of the {changed:,} changed Contacts hold the new values")
            print(f"  {result['written'] / seconds:,.0f} records/s; "
                  f"{run['total']} calls = {run['total'] / DAILY:.3%} of the daily limit of "
                  f"{DAILY:,} (no per-second limit at Salesforce or in its emulator)")  # fmt: skip

            before = counters(base)
            session.reset()
            t = time.perf_counter()
            again = crm.sync(sf, lake, target, today, login=login)
            local = time.perf_counter() - t
            rerun = calls(base, before)
            print(f"\nunchanged re-run right after: {again['written']} written, {rerun['write']} "
                  f"write calls, {rerun['total']} calls in all ("
                  + ", ".join(f"{k} {c}" for k, c in session.calls.items())
                  + f"), {local:.1f} s")  # fmt: skip

            sample = min(args.naive_sample, changed)
            frame = today.head(sample).assign(score=1, flag=False)
            before = counters(base)
            naive_s = naive(sf, ids[:sample], frame, target) / sample * changed
            made = calls(base, before)
            print(f"\nnaive one-PATCH-per-record sync of the same {changed:,} changes: "
                  f"{naive_s:,.0f} s extrapolated from {sample} ({made['single']} PATCH calls, "
                  f"{changed / naive_s:,.0f} records/s); {changed:,} calls = "
                  f"{changed / DAILY:.0%} of the daily limit per run; the Bulk sync is "
                  f"{naive_s / seconds:,.1f}x faster and makes "
                  f"{changed / run['total']:,.0f}x fewer calls")  # fmt: skip

            # Batch-update everything, no diff: on the world the sync found (the org put back as
            # yesterday's run left it), then again with nothing changed.
            put(state, ids[: max(changed, sample)], scores(n).head(max(changed, sample)), target)
            everything = []
            for what in (f"{changed:,} of {n:,} changed", "unchanged re-run"):
                before = counters(base)
                every_s, every_written = batch_everything(sf, login, ids, today, target)
                every = calls(base, before)
                everything.append((every_s, every["total"]))
                print(f"\nbatch-update everything, no diff, {what}: {every_written:,} of {n:,} "
                      f"written in {every_s:.1f} s ({every_written / every_s:,.0f} records/s) "
                      f"by {every['jobs']} Bulk API 2.0 job, {every['total']} calls ("
                      + ", ".join(f"{k} {v}" for k, v in every["by_endpoint"].items())
                      + f"), {every['errors']} errors")  # fmt: skip
            held_every = check_written(state, today, target)
            print(f"  {held_every:,} of the {n:,} Contacts hold the new values")
        finally:
            server.stop(root)

    side_by_side(f"side by side, {changed:,} of {n:,} changed (ratios: baseline over the sync):", [
        ("the sync (diff, one Bulk job of the changes)", seconds, run["total"], ""),
        ("per-record, one PATCH per change", naive_s, changed,
         f" (extrapolated from {sample}; Ids given)"),
        ("batch-update everything, one Bulk job", everything[0][0], everything[0][1],
         f" ({n:,} records sent; Ids given)"),
    ])  # fmt: skip
    side_by_side("side by side, unchanged re-run (batch-everything still sends everything):", [
        ("the sync", local, rerun["total"], ""),
        ("per-record, handed the (empty) diff", 0.0, 0, " (nothing to send)"),
        ("per-record, no diff: one PATCH per Contact", naive_s / changed * n, n,
         f" (extrapolated; {n / DAILY:.0%} of the daily limit)"),
        ("batch-update everything, one Bulk job", everything[1][0], everything[1][1],
         f" ({n:,} records sent; Ids given)"),
    ])  # fmt: skip

    beside = sum(
        v for k, v in run["by_endpoint"].items() if k in WRITES and not k.startswith("bulk_")
    )
    print("\ntargets:")
    print(f"  Bulk API 2.0 ingest jobs for {changed:,} updates: {run['jobs']} (exactly 1): "
          + ("met" if run["jobs"] == 1 and result["api"] == "bulk" else "NOT met"))  # fmt: skip
    print(f"  Collections / single-record writes beside the job: {beside}: "
          + ("met" if beside == 0 else "NOT met"))  # fmt: skip
    print(f"  changed Contacts holding the new values {held:,} of {changed:,}: "
          + ("met" if held == changed else "NOT met"))  # fmt: skip
    print(f"  unchanged re-run write calls {rerun['write']}: "
          + ("met" if rerun["write"] == 0 else "NOT met"))  # fmt: skip
    print(f"  unchanged re-run calls {rerun['total']} (at most {QUIET}): "
          + ("met" if rerun["total"] <= QUIET else "NOT met"))  # fmt: skip
    print(f"  calls per run {run['total']} under 1% of the daily limit ({DAILY // 100:,}): "
          + ("met" if run["total"] < DAILY // 100 else "NOT met"))  # fmt: skip


if __name__ == "__main__":
    main()
