"""Benchmark: speed to lead, from the qualifying event to the CRM flag and the routing alert.

    .venv/bin/python bench/freshness.py                   # 100,000 active users, a whole day
    .venv/bin/python bench/freshness.py --users 20000 --hours 6   # quicker

A simulated day against the sandbox, on its clock (`clock_offset_s`): the idle minutes between
runs are skipped, the runs themselves take the real time they take.

1. The base: `--users` active users with 30 days of history in the lake (written straight as
   canonical events), yesterday's daily snapshot, and the HubSpot emulator holding every contact
   as yesterday's sync left it (and the sync ledger to match).
2. Today in the Mixpanel emulator: each user's events at random moments, processed 5-90 s after
   they happen and exportable 60 s after that (`mixpanel_export_delay_s`); `--crossers` users
   cross the line at a random moment with a burst (3 invites, 2 integrations, 2 pricing views).
   Everyone else who crosses on their own counts too.
3. Every 5 simulated minutes `pipeline.fresh_cycle` runs as the pql_fresh DAG does: intraday
   export, touched users rescored, CRM sync (new PQLs, un-flags, big moves), routing (a CRM task
   and a Slack message). After each run the bench reads the emulators (flags in HubSpot, Slack
   messages) and notes, for each new PQL, when its flag and its alert were there.
4. Prints p50 / p95 / max from qualified_at (the crossing event) to the flag in the CRM and to
   the alert, export calls per hour against Mixpanel's 60, CRM calls per hour against the
   limits, the calls of runs that wrote nothing, and whether anything was lost: every new PQL
   flagged, routed exactly once, and the daily export of the day equal to its intraday batches.
5. The time of one run against the touched users (1k and 10k on the same base) next to a full
   rescore of everyone (what a run would cost without incremental scoring).

Targets: p95 event → CRM flag ≤ 15 minutes; nothing lost; one export call per run; a run that
writes nothing makes at most 2 CRM calls; run time grows with touched users, not the base.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crm_sync  # noqa: E402 (the CRM seed of the sync benchmark: one way to seed)

from pql import config, connections, crm, events, pipeline  # noqa: E402
from pql.crm import hubspot, ledger, routing  # noqa: E402
from pql.enrich import firmographics  # noqa: E402
from pql.events.canonical import SCHEMA  # noqa: E402
from pql.lake import Lake, atomic_dir  # noqa: E402
from pql.scoring import snapshots  # noqa: E402
from sandbox import server  # noqa: E402
from sandbox.mixpanel import DayWriter, index_day  # noqa: E402
from sandbox.state import SandboxState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVERY = 5  # minutes between runs
EXPORT_DELAY_S = 60
GOAL_P95_MIN = 15
EVENTS = {  # event name → share of ordinary activity
    "Core Feature Used": 0.50, "Project Created": 0.10, "Report Exported": 0.10,
    "Page Viewed": 0.12, "Pricing Page Viewed": 0.05, "Teammate Invited": 0.04,
    "Integration Connected": 0.03, "Usage Limit Hit": 0.03, "Billing Page Viewed": 0.03,
}  # fmt: skip
# A planted crosser's burst: 3 invites, 2 integrations, 2 pricing views (54 points at most).
BURST = ["Teammate Invited"] * 3 + ["Integration Connected"] * 2 + ["Pricing Page Viewed"] * 2
INDUSTRIES = ["Software", "Financial Services", "Healthcare", "Retail", "Education", "Media"]


def email(i: int) -> str:
    return f"user{i:06d}@company{i % 5000}.io"


def rates(users: int, rng: np.random.Generator) -> np.ndarray:
    """Events a day per user: most users a little, a few a lot (8% PQLs in the base)."""
    return rng.gamma(0.35, 0.6, users)


def history(lake: Lake, users: int, today: date, rng: np.random.Generator) -> int:
    """30 days of canonical events before `today`, one partition per day; returns the count."""
    rate = rates(users, rng)
    names, shares = list(EVENTS), np.array(list(EVENTS.values()))
    total = 0
    signup = rng.integers(1, 31, users)  # every user is active: signed up in these 30 days
    for back in range(30, 0, -1):
        day = today - timedelta(days=back)
        n = rng.poisson(rate) + (signup == back)
        who = np.repeat(np.arange(users), n)
        start = pd.Timestamp(day, tz="UTC").value // 1000
        ts = start + rng.integers(0, 86_400, len(who)) * 1_000_000
        name = np.array(names)[rng.choice(len(names), len(who), p=shares / shares.sum())]
        table = pa.table(
            {
                "source": pa.array(["mixpanel"] * len(who)),
                "event_id": pa.array([f"h{back}-{k}" for k in range(len(who))]),
                "event_name": pa.array(name),
                "user_key": pa.array([f"u{i}" for i in who]),
                "device_id": pa.nulls(len(who), pa.string()),
                "email": pa.array([email(i) for i in who]),
                "account_key": pa.nulls(len(who), pa.string()),
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "received_at": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "properties": pa.array(["{}"] * len(who)),
            },
            schema=SCHEMA,
        ).sort_by("ts")
        with atomic_dir(lake.events("mixpanel", day)) as tmp:
            pq.write_table(table, tmp / "part-0.parquet")
        total += len(who)
    return total


def companies() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return firmographics.normalise(
        pd.DataFrame(
            {
                "domain": [f"company{i}.io" for i in range(5000)],
                "employees": rng.lognormal(3.5, 1.2, 5000).astype(int) + 1,
                "industry": rng.choice(INDUSTRIES, 5000),
            }
        )
    )


def today_lines(users: int, today: date, crossers: list[int], rng) -> list[dict]:
    """Today's export lines: everyone's ordinary activity, and each crosser's burst."""
    rate = rates(users, np.random.default_rng(1))  # the same users as in history
    names, shares = list(EVENTS), np.array(list(EVENTS.values()))
    n = rng.poisson(rate)
    who = np.repeat(np.arange(users), n)
    at = rng.integers(0, 86_400, len(who))
    name = np.array(names)[rng.choice(len(names), len(who), p=shares / shares.sum())]
    rows = list(zip(who.tolist(), at.tolist(), name.tolist(), strict=True))
    for i in crossers:
        moment = int(rng.integers(0, 86_400 - 120))
        rows += [(i, moment + 20 * k, e) for k, e in enumerate(BURST)]
    start = int(pd.Timestamp(today, tz="UTC").timestamp())
    lag = rng.integers(5, 91, len(rows))  # seconds from the event to Mixpanel's processing
    return [
        {"event": e, "properties": {
            "time": start + s, "distinct_id": f"u{i}", "$insert_id": f"t{k}",
            "$email": email(i), "mp_processing_time_ms": (start + s + int(lag[k])) * 1000}}
        for k, (i, s, e) in enumerate(rows)
    ]  # fmt: skip


def flags_in_crm(state, field: str) -> set[str]:
    """Emails whose contact holds flag 'true' in the HubSpot emulator."""
    with state.db() as conn:
        rows = conn.execute(
            "SELECT json_extract(properties, '$.email') FROM hubspot_objects "
            f"WHERE object_type = 'contacts' AND json_extract(properties, '$.{field}') = 'true'"
        ).fetchall()
    return {r[0] for r in rows}


def slack_mentions(state) -> list[str]:
    path = state.root / "slack" / "messages.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def minutes(values: list[float]) -> str:
    if not values:
        return "no new PQLs measured"
    return (f"p50 {pct(values, 50):.1f} min, p95 {pct(values, 95):.1f} min, "
            f"max {max(values):.1f} min ({len(values):,} PQLs)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--crossers", type=int, default=300)
    ap.add_argument("--hours", type=float, default=24.0, help="simulate this much of the day")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    today = date(2026, 11, 18)
    t0 = pd.Timestamp(today, tz="UTC").to_pydatetime()
    work = Path(tempfile.mkdtemp(prefix="pql-bench-fresh-"))
    lake = Lake(work / "lake")
    base = config.load(ROOT / "config" / "pql.yaml")
    cfg = base.model_copy(
        update={
            "lake": config.LakeSettings(root=lake.root),
            "freshness": config.Freshness(every_minutes=EVERY),
            "routing": base.routing.model_copy(update={"crm_task": True, "slack": True}),
            "enrichment": base.enrichment.model_copy(update={"provider": "none"}),
        }
    )
    print(f"base: {args.users:,} users, 30 days of history …", flush=True)
    started = time.perf_counter()
    n_hist = history(lake, args.users, today, np.random.default_rng(1))
    firmographics.write(lake, companies())
    snapshots.score_day(cfg, today - timedelta(days=1), firmographics.read(lake))
    snap = pd.read_parquet(lake.scores(today - timedelta(days=1)) / "scores.parquet")
    print(f"  {n_hist:,} events; yesterday's snapshot: {int(snap['flag'].sum()):,} PQLs of "
          f"{len(snap):,} users ({snap['flag'].mean():.1%}) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    below = snap[(snap["score"] < cfg.model.threshold - 20) & snap["email"].notna()]
    crossers = sorted(int(u[1:]) for u in below["user_key"].sample(args.crossers, random_state=1))

    settings = {"mixpanel_export_delay_s": EXPORT_DELAY_S, "mixpanel_queries_per_hour": 60}
    # The sandbox in its own process, as in the demo: in this one it would share the GIL.
    root = work / "sandbox"
    state = SandboxState.open(root)
    (root / "settings.json").write_text(json.dumps(settings))
    info = server.start(root)
    state.base_url = info["base_url"]
    try:
        os.environ.update(server.connection_env(state, state.base_url))
        conn = connections.from_env(cfg.crm.connection_id)
        adapter = crm.connect(cfg.crm, conn, outcomes=cfg.outcomes)
        started = time.perf_counter()
        token = state.credentials["hubspot"]["access_token"]
        crm_sync.seed(state, hubspot.client(token, state.base_url, cfg.crm), lake, cfg.crm, snap)
        print(f"  HubSpot seeded with {len(snap):,} contacts in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        # Yesterday's daily run routed yesterday's PQLs.
        done = routing.ledger(lake)
        old = snap[snap["flag"] & snap["email"].notna()]
        keys = list(zip(old["email"], pd.to_datetime(old["qualified_at"], utc=True), strict=True))
        for channel in ("crm_task", "slack"):
            done.record(keys, channel, t0)
        lines = today_lines(args.users, today, crossers, rng)
        with DayWriter(state) as w:
            for line in lines:
                w.write(line)
        index_day(state, today)  # as Mixpanel has its day ready: no first-query build
        print(f"today: {len(lines):,} events in Mixpanel, {len(crossers)} planted crossers",
              flush=True)  # fmt: skip
        exports = {
            s.name: events.session(connections.from_env(s.connection_id))
            for s in cfg.intraday_sources()
        }
        slack = _slack(cfg)
        field = cfg.crm.fields.flag
        flagged0 = flags_in_crm(state, field)
        seen_flag: dict[str, datetime] = {}
        seen_alert: dict[str, datetime] = {}
        runs, read = [], 0
        end = t0 + timedelta(hours=args.hours, minutes=15)
        t = t0 + timedelta(minutes=EVERY)
        while t <= end:
            set_clock(state, t)
            before = crm_sync.counters(state.base_url)
            run = _cycle(cfg, exports, adapter, slack, t)
            run["crm"] = crm_sync.calls(state.base_url, before)
            runs.append(run)
            for e in flags_in_crm(state, field) - flagged0 - set(seen_flag):
                seen_flag[e] = t + timedelta(seconds=run["sync_done"])
            posted = slack_mentions(state)
            for text in posted[read:]:
                for e in _emails(text):
                    seen_alert.setdefault(e, t + timedelta(seconds=run["route_done"]))
            read = len(posted)
            if os.environ.get("BENCH_DEBUG"):
                print(t, {k: v for k, v in run.items() if k != "t"}, flush=True)
            if len(runs) % 12 == 0:
                print(f"  {t:%H:%M}: {run['touched']:,} touched, {run['seconds']:.1f} s a run; "
                      f"{len(seen_flag):,} flagged so far", flush=True)  # fmt: skip
            t += timedelta(minutes=EVERY)
        targets = _report(cfg, lake, state, runs, seen_flag, seen_alert, crossers, today, args)
        _touched_cost(cfg, lake, adapter, today, args.users)
        print("\ntargets:")
        for what, ok in targets:
            status = ok if isinstance(ok, str) and ok.startswith("not run") else (
                "met" if ok else "not met")  # fmt: skip
            print(f"  {what}: {status}")
    finally:
        server.stop(root)


def set_clock(state, moment: datetime) -> None:
    """Move the sandbox clock so that it reads `moment` now."""
    offset = (moment - datetime.now(UTC)).total_seconds()
    requests.post(state.base_url + "/_sandbox/settings", json={"clock_offset_s": offset},
                  timeout=10).raise_for_status()  # fmt: skip


def _slack(cfg):
    from pql import notify

    return notify.slack_webhook(connections.from_env(cfg.routing.slack_connection_id))


def _emails(text: str) -> list[str]:
    import re

    return re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text)


def _cycle(cfg, exports, adapter, slack, t: datetime) -> dict:
    """One intraday run, step by step (as the DAG's tasks), with each step's end in seconds."""
    clock = time.perf_counter()
    got = {name: pipeline.extract_fresh(cfg, name, s, h, now=t) for name, (s, h) in exports.items()}
    files = [f for e in got.values() for f in e["files"]]
    extracted = time.perf_counter() - clock
    scored = pipeline.rescore_fresh(cfg, files, now=t)
    rescored = time.perf_counter() - clock
    synced = pipeline.sync_fresh(cfg, adapter)
    sync_done = time.perf_counter() - clock
    routed = pipeline.route_fresh(cfg, adapter, slack)
    route_done = time.perf_counter() - clock
    return {
        "t": t, "export_calls": sum(1 + e["fetch_retries"] for e in got.values()),
        "events": sum(e["added"] for e in got.values()), "touched": scored["touched"],
        "new_pqls": scored["new_pqls"], "written": synced["written"],
        "deferred": synced.get("deferred", 0), "routed": routed,
        "extract": extracted, "rescore": rescored - extracted, "sync_done": sync_done,
        "route_done": route_done, "seconds": route_done,
    }  # fmt: skip


def _report(cfg, lake, state, runs, seen_flag, seen_alert, crossers, today, args) -> list:
    """Prints the day's figures; returns the targets as (what, met)."""
    view = snapshots.view(lake)
    q = pd.to_datetime(view["qualified_at"], utc=True)
    day0 = pd.Timestamp(today, tz="UTC")
    new = view[view["flag"] & (q >= day0) & (q < day0 + pd.Timedelta(hours=args.hours))]
    qual = dict(zip(new["email"], pd.to_datetime(new["qualified_at"], utc=True), strict=True))
    to_flag = [(seen_flag[e] - qual[e].to_pydatetime()).total_seconds() / 60
               for e in qual if e in seen_flag]  # fmt: skip
    to_alert = [(seen_alert[e] - qual[e].to_pydatetime()).total_seconds() / 60
                for e in qual if e in seen_alert]  # fmt: skip
    frame = pd.DataFrame(runs)
    hours = frame.groupby(frame["t"].dt.floor("h"))
    planted = {email(i) for i in crossers}
    mentions = pd.Series([e for m in slack_mentions(state) for e in _emails(m)]).value_counts()
    print("\nresults")
    print(
        f"  new PQLs today: {len(qual):,} (of them planted crossers: "
        f"{len(planted & set(qual)):,} of {len(planted):,}; the others crossed on their own)"
    )
    print(f"  qualifying event → flag in the CRM: {minutes(to_flag)}")
    print(f"  qualifying event → routing alert (Slack): {minutes(to_alert)}")
    flagged = ledger.flag_times(lake, "hubspot")
    by_report = [(flagged[e] - qual[e]).total_seconds() / 60 for e in qual if e in flagged.index]
    print(
        f"  the same as the weekly report counts it (the ledger's flagged_at, HubSpot's own "
        f"clock): {minutes(by_report)}"
    )
    print(
        f"  floor: Mixpanel processing 5-90 s + export delay {EXPORT_DELAY_S} s; the cadence "
        f"adds up to {EVERY} min; a run takes p50 {frame['seconds'].median():.1f} s, "
        f"max {frame['seconds'].max():.1f} s"
    )
    print(
        f"  export calls per hour: max {hours['export_calls'].sum().max()} of Mixpanel's 60 "
        f"({len(frame)} runs, {frame['export_calls'].sum()} calls)"
    )
    crm_calls = frame["crm"].apply(lambda c: sum(v for k, v in c.items() if k != "429"))
    quiet = crm_calls[frame["written"] == 0]
    print(
        f"  CRM calls per hour: max {crm_calls.groupby(frame['t'].dt.floor('h')).sum().max():,}"
        f" (HubSpot allows 36,000 an hour at 100 per 10 s, 250,000 a day); runs that wrote "
        f"nothing: {len(quiet)} of {len(frame)}, at most {quiet.max() if len(quiet) else 0} "
        f"calls each; {frame['written'].sum():,} records written, "
        f"{frame['deferred'].max() if len(frame) else 0:,} small changes left for the daily"
    )
    lost = sorted(set(qual) - set(seen_flag))
    twice = mentions[mentions > 1]
    print(
        f"  nothing lost: {len(qual) - len(lost):,} of {len(qual):,} new PQLs flagged in the "
        f"CRM; {len(set(qual) & set(mentions.index)):,} of {len(qual):,} routed; "
        f"{len(twice)} routed more than once" + (f"; missing e.g. {lost[:3]}" if lost else "")
    )
    daily = _daily_reconciles(cfg, lake, state, today, args.hours)
    p95 = pct(to_flag, 95) if to_flag else None
    most = int(quiet.max()) if len(quiet) else 0
    calls = int(frame["export_calls"].sum())
    return [
        (f"p95 qualifying event → CRM flag ≤ {GOAL_P95_MIN} min "
         f"({'no PQLs' if p95 is None else f'{p95:.1f} min'})",
         p95 is not None and p95 <= GOAL_P95_MIN),
        (f"new PQLs flagged in the CRM ({len(qual) - len(lost):,} of {len(qual):,})", not lost),
        (f"new PQLs routed exactly once ({len(set(qual) & set(mentions.index)) - len(twice):,} "
         f"of {len(qual):,})", set(qual) <= set(mentions.index) and not len(twice)),
        (f"one export call per run ({calls} calls in {len(frame)} runs)", calls == len(frame)),
        (f"runs that wrote nothing made at most 2 CRM calls (at most {most})", most <= 2),
        ("daily export equals the intraday batches"
         + (f" ({daily})" if isinstance(daily, str) and not daily.startswith("not run") else ""),
         daily),
    ]  # fmt: skip


def _daily_reconciles(cfg, lake, state, today, hours) -> None:
    """The daily export of the day, after it ends, against its intraday batches."""
    if hours < 24:
        print("  daily reconciliation: not run (a partial day)")
        return "not run: a partial day"
    at = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=3)
    set_clock(state, at)
    src = cfg.intraday_sources()[0]
    session, host = events.session(connections.from_env(src.connection_id))
    pipeline.extract(cfg, src.name, today, session, host, lookback_days=0)
    manifest = json.loads((lake.raw(src.name, today) / "manifest.json").read_text())
    r = manifest.get("intraday", {}).get(today.isoformat())
    print(f"  daily reconciliation of {today}: {r}")
    if not r:
        return False
    exact = r["in_daily"] == r["intraday_events"] == r["daily_events"]
    return exact and f"{r['in_daily']:,} of {r['daily_events']:,} events"


def _touched_cost(cfg, lake, adapter, today, users: int) -> None:
    """One run's rescoring against the touched users, next to a full rescore of everyone."""
    moment = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
    day = today + timedelta(days=1)
    rng = np.random.default_rng(11)
    print("\nrun time against touched users (same base of "
          f"{users:,} users; best of 2)")  # fmt: skip
    for n in (n for n in (1_000, 10_000) if n <= users // 2):
        best = float("inf")
        for attempt in range(2):
            who = rng.choice(users, n, replace=False)
            ts = pd.Timestamp(moment) + pd.Timedelta(minutes=20 + attempt)
            batch = pa.table({
                "source": ["mixpanel"] * n, "event_id": [f"x{n}-{attempt}-{i}" for i in who],
                "event_name": ["Core Feature Used"] * n, "user_key": [f"u{i}" for i in who],
                "device_id": pa.nulls(n, pa.string()), "email": [email(i) for i in who],
                "account_key": pa.nulls(n, pa.string()),
                "ts": pa.array([ts.value // 1000] * n, pa.timestamp("us", tz="UTC")),
                "received_at": pa.array([ts.value // 1000] * n, pa.timestamp("us", tz="UTC")),
                "properties": ["{}"] * n}, schema=SCHEMA)  # fmt: skip
            part = lake.events("mixpanel", day)
            part.mkdir(parents=True, exist_ok=True)
            path = part / f"intraday-bench-{n}-{attempt}.parquet"
            pq.write_table(batch, path)
            clock = time.perf_counter()
            pipeline.rescore_fresh(
                cfg, [str(path)], now=(ts + pd.Timedelta(seconds=1)).to_pydatetime()
            )
            best = min(best, time.perf_counter() - clock)
        print(f"  {n:,} touched: rescored in {best:.2f} s ({1000 * best / n:.2f} ms a user)")
    clock = time.perf_counter()
    everyone = snapshots.score_users(cfg, lake, moment + timedelta(hours=1),
                                     firmographics.read(lake), snapshots.view(lake))  # fmt: skip
    full = time.perf_counter() - clock
    print(
        f"  a full rescore of all {len(everyone):,} users instead: {full:.2f} s "
        "(what every run would cost without incremental scoring)"
    )


if __name__ == "__main__":
    main()
