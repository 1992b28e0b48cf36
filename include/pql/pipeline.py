"""The pipeline's steps, each idempotent over its day or week. DAG tasks and the CLI call these.

Each takes ready-made vendor clients (built from Airflow connections by the hooks, or from the
environment by the CLI) and returns a small dict of counts and paths. Long because it is the
one door to every step, daily and intraday (README, "Speed to lead"), for DAGs and CLI alike.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import requests

from pql.config import Config
from pql.crm import Crm
from pql.enrich import company_api, firmographics
from pql.events import amplitude, canonical, mixpanel, profiles
from pql.http import Budget
from pql.lake import Lake
from pql.report import metrics, outcomes, weekly
from pql.scoring import datacheck, predictive, snapshots

log = logging.getLogger(__name__)

EXTRACTORS = {"mixpanel": mixpanel, "amplitude": amplitude}


def day_before(moment: datetime) -> date:
    """The last whole UTC day that ended at or before `moment` (what a daily run covers)."""
    return moment.astimezone(UTC).date() - timedelta(days=1)


def extract(
    cfg: Config,
    source_name: str,
    day: date,
    session: requests.Session,
    host: str | None,
    *,
    lookback_days: int | None = None,
) -> dict:
    """Export `day` and the look-back days before it; each day's partition is replaced whole."""
    src = cfg.source(source_name)
    back = src.lookback_days if lookback_days is None else lookback_days
    return extract_range(
        cfg, source_name, day - timedelta(days=back), day, session, host, window_days=back + 1
    )


def extract_range(
    cfg: Config,
    source_name: str,
    first: date,
    last: date,
    session: requests.Session,
    host: str | None,
    *,
    window_days: int = 7,
    progress=None,
) -> dict:
    """Export first..last in windows of `window_days` (one API call each), then look up the
    profile emails of users whose events have none: daily runs and backfills alike."""
    src = cfg.source(source_name)
    if first > last:
        raise ValueError(f"--from {first} is after --to {last}")
    if src.start_date and last < src.start_date:
        raise ValueError(
            f"{source_name} {first}..{last} is before the source's start_date {src.start_date} "
            "in the config: nothing to extract there. Move start_date back to extract it."
        )
    first = max(first, src.start_date) if src.start_date else first
    # Mixpanel counts export queries per project: 60 an hour and 3 a second by default; every
    # fetch spends the budget, retries included, and the intraday runs share it.
    budget = export_budget(cfg, src)
    totals = {"windows": 0, "fetch_retries": 0, "raw": 0, "canonical": 0, "duplicates": 0,
              "quarantined": 0}  # fmt: skip
    start = first
    while start <= last:
        end = min(last, start + timedelta(days=window_days - 1))
        client = EXTRACTORS[src.kind]
        result = client.extract_window(
            session,
            Lake(cfg.lake.root),
            src,
            base=client.base_url(src.residency, host),
            first=start,
            last=end,
            email_properties=cfg.identity.email_properties,
            account_properties=cfg.identity.account_properties,
            budget=budget,
        )
        totals["windows"] += 1
        for k in ("fetch_retries", "raw", "canonical", "duplicates", "quarantined"):
            totals[k] += result[k]
        if progress:
            progress((end - start).days + 1)
        start = end + timedelta(days=1)
    log.info("extract %s %s..%s: %s", source_name, first, last, totals)
    result = {"source": source_name, "first": first.isoformat(), "last": last.isoformat(),
              **totals}  # fmt: skip
    if src.kind == "mixpanel" and src.profile_lookup:
        # Emails of users whose events carry none, from their Mixpanel profiles (Engage): the
        # DAG and the CLI's backfills alike.
        result["profiles"] = profiles.refresh(
            session,
            Lake(cfg.lake.root),
            src.name,
            profiles.engage_url(src.residency, host),
            src.project_id,
            conn_id=src.connection_id,
        )
    return result


def newest_events_day(cfg: Config) -> date:
    """The newest day any source has canonical events for."""
    lake = Lake(cfg.lake.root)
    days = [d for s in cfg.sources for d, _ in lake.partitions(f"events/source={s.name}")]
    if not days:
        raise LookupError(f"no canonical events in {cfg.lake.root}: run an extract first")
    return max(days)


def refresh_accounts(
    cfg: Config,
    crm: Crm | None,
    enrichment: tuple[requests.Session, str | None] | None = None,
) -> dict:
    """Fetch firmographics from the configured provider and keep them in the lake.

    `crm` is the CRM's adapter (provider 'crm': its companies or Accounts); `enrichment` is
    the API's (session, base URL) for provider 'api'.
    """
    lake = Lake(cfg.lake.root)
    provider = cfg.enrichment.provider
    stats = {}
    if provider == "crm":
        if crm is None:
            raise ValueError("enrichment provider 'crm' needs the CRM's adapter")
        accounts = crm.read_accounts()
    elif provider == "file":
        accounts = firmographics.from_file(cfg.enrichment.file)
    elif provider == "api":
        if enrichment is None:
            raise ValueError("enrichment provider 'api' needs the API's (session, base URL)")
        e = cfg.enrichment
        accounts = company_api.fetch(
            *enrichment,
            company_domains(lake, cfg.identity.free_email_domains),
            lake,
            ttl_days=e.cache_ttl_days,
            requests_per_second=e.requests_per_second,
            max_requests=e.max_requests_per_run,
            connection_id=e.connection_id,
        )
        stats = accounts.attrs.get("enrichment", {})
    else:
        accounts = pd.DataFrame(columns=firmographics.COLUMNS)
    path = firmographics.write(lake, accounts)
    log.info("enrichment (%s): %s accounts", provider, len(accounts))
    return {"accounts": len(accounts), "path": str(path), **stats}


def company_domains(lake: Lake, free_email_domains: list[str]) -> list[str]:
    """Distinct work-email domains of identified users, plus account keys that are domains.

    Emails come from the canonical events and from the profiles the identity step looked up.
    """
    if not any((lake.root / "events").glob("source=*/date=*/*.parquet")):
        return []

    def scan(glob) -> str:
        path = str(glob).replace("'", "''")
        return f"read_parquet('{path}', hive_partitioning = false, union_by_name = true)"

    emails = f"SELECT email FROM {scan(lake.events_glob())} WHERE user_key NOT LIKE '$device:%'"
    if any((lake.root / "identity").glob("*/profiles.parquet")):
        emails += f" UNION ALL SELECT email FROM {scan(lake.root / 'identity/*/profiles.parquet')}"
    sql = f"""
        SELECT lower(split_part(email, '@', 2)) FROM ({emails}) WHERE email LIKE '%_@_%._%'
        UNION
        SELECT lower(account_key) FROM {scan(lake.events_glob())}
        WHERE regexp_full_match(lower(account_key), '([a-z0-9-]+\\.)+[a-z]{{2,}}')
    """
    free = {d.lower() for d in free_email_domains}
    with duckdb.connect() as con:
        found = {row[0] for row in con.sql(sql).fetchall()}
    return sorted(d for d in found if d and d not in free)


def score(cfg: Config, day: date, *, spark_submit=None) -> dict:
    """Score every user as of the end of `day` into scores/date=day.

    `spark_submit(job)`: how to run the Spark feature job on a cluster (features.engine spark
    with features.spark.submit; in Airflow, pql_airflow.spark.submitter).
    """
    lake = Lake(cfg.lake.root)
    result = snapshots.score_day(cfg, day, firmographics.read(lake), spark_submit=spark_submit)
    # A misspelled event or property validates as config and then never matches: say so.
    unseen = datacheck.unseen_names(cfg, lake)
    for line in unseen:
        log.warning("config vs data: %s", line)
    return {**result, "config_warnings": len(unseen)}


def check_against_lake(cfg: Config) -> list[str]:
    """Every name the config uses that the lake's events never hold, and every catalogue
    feature that is 0 for all users as of the end of the newest day (pql validate --lake)."""
    lake = Lake(cfg.lake.root)
    try:
        day = newest_events_day(cfg)
    except LookupError as e:
        return [str(e)]
    as_of = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    feats = snapshots.features_at(cfg, lake, as_of, firmographics.read(lake))
    return datacheck.check(cfg, lake, feats, as_of)


def new_pqls(cfg: Config, day: date, sample: int = 10) -> tuple[int, pd.DataFrame]:
    """How many users first qualified in `day`'s snapshot, and up to `sample` of them (email,
    score, qualified_at, reasons), best scores first."""
    lake = Lake(cfg.lake.root)
    path = lake.scores(day) / "scores.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no scores for {day} at {path}: run pql score --day {day}")
    snap = pd.read_parquet(path)
    before = snapshots.previous_snapshot(lake, day)
    seen = (
        set(before.loc[before["qualified_at"].notna(), "user_key"]) if before is not None else set()
    )
    new = snap[snap["qualified_at"].notna() & ~snap["user_key"].isin(seen)]
    cols = ["email", "score", "qualified_at", "reasons"]
    return len(new), new.sort_values("score", ascending=False)[cols].head(sample)


def sync(cfg: Config, day: date, crm: Crm, *, dry_run: bool = False) -> dict:
    """Write the day's changed scores into the CRM (`crm`: its adapter, pql.crm.connect)."""
    lake = Lake(cfg.lake.root)
    accounts = lake.scores(day) / "accounts.parquet"
    scores = _day_scores(cfg, lake, day)
    with lake.lock(f"sync-{crm.kind}"):  # an intraday sync saves the same ledger
        result = crm.sync(lake, scores, dry_run=dry_run)
    if cfg.crm.sync_accounts and accounts.exists() and not dry_run:
        result["accounts"] = crm.sync_accounts(lake, pd.read_parquet(accounts))
    return result


def route(cfg: Config, day: date, crm: Crm | None, slack=None) -> dict:
    """Follow-ups for leads that newly qualified in the day's scores (each once per lead).

    `crm` is the configured CRM's adapter (None when no CRM task is routed); `slack` the
    webhook's (session, URL).
    """
    from pql.crm import routing

    lake = Lake(cfg.lake.root)
    scores = _day_scores(cfg, lake, day)
    with lake.lock("routing"):
        return routing.route(lake, cfg.routing, scores, crm=crm, slack=slack)


def _day_scores(cfg: Config, lake: Lake, day: date) -> pd.DataFrame:
    """The day's snapshot, or, when it is the newest and intraday runs are on, every user's
    latest row over it: a daily sync never writes older values over fresher ones."""
    path = lake.scores(day) / "scores.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"no scores for {day} at {path}: run `pql score --day {day}` (or the score DAG) first"
        )
    newest = lake.partitions("scores")[-1][0]
    if cfg.freshness.enabled and newest == day:
        return snapshots.view(lake)
    return pd.read_parquet(path)


def retrain(cfg: Config, day: date) -> dict:
    """Propose a new predictive version from the lake's outcomes; promoted only if better."""
    from pql.scoring import training

    if cfg.model.kind != "predictive":
        return {"retrained": False, "why": f"model.kind is {cfg.model.kind!r}"}
    until = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    result = training.train(cfg, until, firmographics.read(Lake(cfg.lake.root)))
    return {
        "retrained": True,
        **{k: result[k] for k in ("version", "promoted", "rows")},
        "auc": result["metrics"].get("auc"),
        "reason": result["comparison"].get("reason"),
    }


def pull_outcomes(cfg: Config, crm: Crm, *, full: bool = False) -> tuple[dict, dict]:
    """Bring the lake's store of the CRM's meetings, won deals and tasks up to date.

    `crm` is the configured CRM's adapter. Only records modified since the previous pull are
    asked for, unless a full pull is due or `full`. Returns the store's frames by kind and
    what the pull did.
    """
    rule = cfg.outcomes
    return outcomes.refresh(
        Lake(cfg.lake.root),
        crm.kind,
        crm.pull_outcomes,
        margin=timedelta(minutes=rule.pull_margin_minutes),
        full_every=timedelta(days=rule.full_pull_days) if rule.full_pull_days else None,
        full=full,
    )


def weekly_report(cfg: Config, week: date, crm: Crm, *, full_pull: bool = False) -> dict:
    """Pull what changed in the CRM (`crm`: its adapter) and write the conversion report for
    `week` from all outcomes up to its end; `full_pull` re-reads everything."""
    lake = Lake(cfg.lake.root)
    until = datetime.combine(week + timedelta(days=7), datetime.min.time(), UTC)
    if week + timedelta(days=6) < cfg.first_day():
        raise ValueError(
            f"the week of {week} ends before the first day the config covers "
            f"({cfg.first_day()}, the earliest sources[].start_date): no report for it"
        )
    store, pulled = pull_outcomes(cfg, crm, full=full_pull)
    upto = outcomes.as_of(store, until)
    meetings, won, tasks = upto["meetings"], upto["won"], upto["tasks"]
    outcomes.save(lake, week, meetings, won, tasks)
    taken = [p for d, p in lake.partitions("scores") if d < week + timedelta(days=7)]
    if not taken:
        raise LookupError(f"no scores snapshot before {until:%Y-%m-%d}: run the scoring first")
    users = pd.read_parquet(taken[-1] / "scores.parquet")
    from pql.crm import ledger

    rule = cfg.outcomes
    rep = weekly.compute(
        users, meetings, won, week=week, window_days=rule.attribution_window_days, tasks=tasks,
        segments=rule.segments, min_conversions=rule.min_conversions,
        excluded_outcomes=rule.excluded_meeting_outcomes,
        versions=metrics.qualifying_versions(metrics.scores_glob(lake.root / "scores")),
        pqa=metrics.qualifying_accounts(str(lake.root / "scores" / "date=*" / "accounts.parquet")),
        models=predictive.versions(lake.models()),
        # When each PQL's flag reached the CRM: the pipeline's own latency, beside first touch.
        flagged=ledger.flag_times(lake, crm.kind),
    )  # fmt: skip
    html = weekly.write(lake, rep, generated_at=datetime.now(UTC))
    return {
        "week": week.isoformat(),
        "meetings": len(meetings),
        "won_deals": len(won),
        "sales_tasks": len(tasks),
        "pull": pulled["pull"],
        "pulled": sum(v for k, v in pulled.items() if k.endswith("_pulled")),
        "summary": rep.summary["lines"],
        "report": str(html),
    }


# Speed to lead (README): the intraday steps. Each run brings what arrived since the last one,
# rescores the users it touched, and writes new PQLs and un-flags to the CRM and routing.


def extract_fresh(
    cfg: Config,
    source_name: str,
    session: requests.Session,
    host: str | None,
    *,
    now: datetime | None = None,
) -> dict:
    """Add to today's partition what `source_name` made exportable since its last intraday
    run; returns counts and the new events' files (for `rescore_fresh`)."""
    src = cfg.source(source_name)
    now = now or datetime.now(UTC)
    lake = Lake(cfg.lake.root)
    fresh = cfg.freshness
    # Shared with the daily runs and backfills (pipeline.extract_range): the intraday runs
    # never wait longer than their own cadence for a query.
    budget = export_budget(cfg, src, intraday=True, now=now)
    client = EXTRACTORS[src.kind]
    result = client.extract_fresh(
        session,
        lake,
        src,
        base=client.base_url(src.residency, host),
        now=now,
        overlap=timedelta(minutes=fresh.overlap_minutes),
        email_properties=cfg.identity.email_properties,
        account_properties=cfg.identity.account_properties,
        budget=budget,
        max_wait=fresh.every_minutes * 60.0,
    )
    return result


def export_budget(
    cfg: Config, src, *, intraday: bool = False, now: datetime | None = None
) -> Budget:
    """A source's export budget. With intraday runs on it is shared by every process through
    the lake (Mixpanel counts 60 queries an hour per project, whoever asks): a backfill
    leaves the intraday runs their share."""
    per_hour = getattr(src, "queries_per_hour", 3600)
    if not cfg.freshness.enabled:
        return Budget([(per_hour, 3600.0), (3, 1.0)])
    shared = Lake(cfg.lake.root).root / "locks" / f"budget-{src.name}.log"
    if not intraday:  # the others stop short of the queries the intraday runs need
        per_hour = max(1, per_hour - cfg.freshness.runs_per_hour())
    clock = None
    if now is not None:  # the run's own clock (a replayed day runs faster than real time)
        started = time.monotonic()
        clock = lambda: now.timestamp() + time.monotonic() - started  # noqa: E731
    return Budget([(per_hour, 3600.0), (3, 1.0)], shared=shared, clock=clock)


def rescore_fresh(cfg: Config, files: list[str] | None = None, *, now=None) -> dict:
    """Rescore, as of `now`, the users the intraday batches touched: `files` (what the run's
    extraction noted) and any batch an earlier run noted but did not get to rescore; each
    note is removed once its users are rescored."""
    from pql.scoring import intraday

    lake = Lake(cfg.lake.root)
    now = now or datetime.now(UTC)
    notes = sorted({*(files or ()), *map(str, (lake.live() / "touched").glob("*.parquet"))})
    notes = [f for f in notes if Path(f).exists()]
    with lake.lock("live-scores"):  # two runs never rescore over each other
        result = intraday.rescore(cfg, lake, notes, now, firmographics.read(lake))
    for f in notes:
        Path(f).unlink(missing_ok=True)
    return {**result, "batches": len(notes)}


def sync_fresh(cfg: Config, crm: Crm) -> dict:
    """Write what moved the flag (or the score by at least freshness.min_score_change) in the
    latest scores to the CRM; smaller changes wait for the daily sync."""
    lake = Lake(cfg.lake.root)
    current = _latest_scores(lake)
    with lake.lock(f"sync-{crm.kind}"):
        return crm.sync(lake, current, min_score_change=cfg.freshness.min_score_change)


def route_fresh(cfg: Config, crm: Crm | None, slack=None) -> dict:
    """Follow-ups for the leads that qualified since they were last routed (the latest
    scores: intraday rows over the daily snapshot), each once per qualification."""
    from pql.crm import routing

    lake = Lake(cfg.lake.root)
    current = _latest_scores(lake)
    with lake.lock("routing"):
        return routing.route(lake, cfg.routing, current, crm=crm, slack=slack)


def _latest_scores(lake: Lake) -> pd.DataFrame:
    """Every user's latest row (intraday rows over the newest snapshot)."""
    current = snapshots.view(lake)
    if current is None:
        raise LookupError(f"no scores in {lake.root}: run the scoring first")
    return current


def freshness_lag(cfg: Config, *, now: datetime | None = None) -> dict:
    """How long ago each intraday source last brought data, against freshness.max_lag_minutes;
    raises FreshnessLag naming the sources behind (the task's failure alert says so)."""
    lake = Lake(cfg.lake.root)
    now = now or datetime.now(UTC)
    bound = cfg.freshness.max_lag_minutes
    lags, behind = {}, []
    for src in cfg.sources:
        state = canonical.intraday_state(lake, src.name)
        if "fetched_at" not in state:
            lags[src.name] = "no intraday run yet"
            continue
        minutes = (now - datetime.fromisoformat(state["fetched_at"])).total_seconds() / 60
        lags[src.name] = round(minutes, 1)
        if minutes > bound:
            behind.append(f"{src.name} last brought data {minutes:.0f} minutes ago")
    if behind:
        raise FreshnessLag(
            f"intraday runs are behind ({'; '.join(behind)}; freshness.max_lag_minutes is "
            f"{bound}): check the pql_fresh DAG's recent runs and the export's errors"
        )
    return {"lag_minutes": lags, "max_lag_minutes": bound}


class FreshnessLag(Exception):
    """The intraday runs fell behind their configured bound."""


def fresh_cycle(
    cfg: Config,
    exports: dict[str, tuple[requests.Session, str | None]],
    crm: Crm | None,
    slack=None,
    *,
    now: datetime | None = None,
) -> dict:
    """One intraday run, as the pql_fresh DAG's tasks do it in turn (the CLI's `pql fresh`):
    `exports` maps each Mixpanel source to its (session, host)."""
    now = now or datetime.now(UTC)
    extracted = {
        name: extract_fresh(cfg, name, session, host, now=now)
        for name, (session, host) in exports.items()
    }
    files = [f for e in extracted.values() for f in e["files"]]
    out = {"extracted": extracted, "rescored": rescore_fresh(cfg, files, now=now)}
    if crm is not None:
        out["synced"] = sync_fresh(cfg, crm)
    rule = cfg.routing
    if rule.crm_task or rule.slack:
        out["routed"] = route_fresh(cfg, crm if rule.crm_task else None, slack)
    return out
