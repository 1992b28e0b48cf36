"""The `pql` command: one short function per pipeline step (parse, call the step, print).

Long because it is the whole command line in one place (validate, init, extract, score,
backtest, train, sync, report, events stats); each command stays a few lines."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pql import config as config_mod

ROOT = Path(__file__).resolve().parents[2]
console = Console(soft_wrap=True)  # messages whole when piped; tables: _print


def _print(renderable) -> None:
    """Print a table; piped or redirected, its rows stay whole instead of wrapping at 80."""
    (console if console.is_terminal else Console(width=100_000)).print(renderable)


@click.group()
def main() -> None:
    """Product-qualified leads: product events → scores in the CRM → conversion reports."""


@main.command()
@click.option(
    "--config",
    "path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file (default: $PQL_CONFIG or config/pql.yaml).",
)
@click.option("--features", is_flag=True, help="Also list the feature names rules may use.")
@click.option("--lake", "against_lake", is_flag=True,
              help="Also check the config against the events in the lake: names never seen "
              "(with the nearest that are) and features that are 0 for everyone.")  # fmt: skip
def validate(path: Path | None, features: bool, against_lake: bool) -> None:
    """Check a config file; print every mistake with its key path and line."""
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        # Plain lines, never wrapped: each problem stays whole for grep and for CI logs.
        click.echo(f"{e.path}: {len(e.problems)} problem(s)")
        for p in e.problems:
            click.echo(f"  - {p}")
        sys.exit(1)
    model = cfg.model
    parts = {"weighted": "signals", "threshold": "rules"}
    detail = (
        f"{len(getattr(model, parts[model.kind]))} {parts[model.kind]}"
        if model.kind in parts
        else (f"{model.target} within {model.horizon_days} days")
    )
    click.echo(
        f"ok: {len(cfg.sources)} source(s), model {model.kind} {model.version} ({detail}), "
        f"CRM {cfg.crm.kind}, lake {cfg.lake.root}"
    )
    if features:
        click.echo("features a rule or model may name:")
        for name in cfg.features.names():
            click.echo(f"  {name}")
    if against_lake:
        from pql import pipeline

        found = pipeline.check_against_lake(cfg)
        for line in found:
            click.echo(f"  - {line}")
        if found:
            click.echo(
                f"{len(found)} problem(s) between the config and the events in "
                f"{cfg.lake.root}: fix the names (or the tracking), then re-run"
            )
            sys.exit(1)
        click.echo(f"ok: every name the config uses occurs in the events in {cfg.lake.root}")


# --- extract and events ----------------------------------------------------------------

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file (default: $PQL_CONFIG or config/pql.yaml).",
)


def _load(config_path: Path | None):
    try:
        return config_mod.load(config_path)
    except config_mod.ConfigError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@config_option
@click.option(
    "--source",
    "source_name",
    default=None,
    help="Source name from the config (default: the first).",
)
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option(
    "--window-days",
    default=7,
    show_default=True,
    help="Days per export call (Mixpanel allows 60 calls an hour).",
)
def extract(config_path, source_name, first, last, window_days) -> None:
    """Export a range of days (a backfill); each day's partition is replaced whole.

    Credentials come from AIRFLOW_CONN_<CONNECTION_ID> (see `pql-sandbox env`).
    """
    from pql import connections, events, pipeline

    cfg = _load(config_path)
    src = cfg.source(source_name) if source_name else cfg.sources[0]
    try:
        session, host = events.session(connections.from_env(src.connection_id))
    except LookupError as e:
        raise click.ClickException(str(e)) from None
    first, last = first.date(), last.date()
    with Progress(console=console) as bar:
        job = bar.add_task(f"{src.name} {first}..{last}", total=(last - first).days + 1)
        try:
            result = pipeline.extract_range(
                cfg,
                src.name,
                first,
                last,
                session,
                host,
                window_days=window_days,
                progress=lambda n: bar.advance(job, n),
            )
        except Exception as e:  # vendor errors carry their own what-to-do message
            raise click.ClickException(f"{type(e).__name__}: {e}") from None
    # One plain line: the reconciliation is read (and grepped) as a whole.
    click.echo(
        f"{src.name} {first}..{last}: {result['raw']:,} raw lines = "
        f"{result['canonical']:,} canonical + {result['duplicates']:,} duplicates + "
        f"{result['quarantined']:,} quarantined ({result['windows']} export calls"
        + (f", {retries} fetched again" if (retries := result["fetch_retries"]) else "")
        + ")"  # fmt: skip
    )
    if "profiles" in result:
        p = result["profiles"]
        click.echo(f"profile emails: {p['found']:,} found for {p['looked_up']:,} users whose "
                   "events had none (Mixpanel Engage)")  # fmt: skip


# --- scoring: backtest and training --------------------------------------------------------


@main.command()
@config_option
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the proposed config (default: <config>.proposed.yaml).",
)
@click.option("--target", type=click.Choice(["won", "meeting"]), default="won",
              show_default=True, help="The outcome the proposal should predict.")  # fmt: skip
def init(config_path, out_path, target) -> None:
    """Propose a PQL definition for this product from the events in the lake (and the CRM
    outcomes the weekly pulls kept): signals, a threshold flagging 5-15% of users, and the
    backtest of the proposal. Nothing is changed but the file written."""
    from pql import config as config_mod
    from pql.scoring import propose

    cfg = _load(config_path)
    source = Path(config_path or os.environ.get("PQL_CONFIG") or config_mod.DEFAULT_CONFIG)
    out_path = out_path or source.with_name(source.stem + ".proposed.yaml")
    with Progress(console=console, transient=True) as bar:
        bar.add_task("reading the events, scoring the proposal, backtesting it", total=None)
        try:
            p = propose.propose(cfg, target=target)
        except (LookupError, ValueError) as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"events in {cfg.lake.root}: " + (
        f"outcomes-based (converters: a {target} after doing them)" if p.basis == "outcomes"
        else "usage-based: no CRM outcomes yet, proposing from usage alone"))  # fmt: skip
    table = Table()
    cols = ["event", "events", "users"] + (
        ["converters did it", "others did it", "ratio"] if p.basis == "outcomes" else []
    )
    for col in cols:
        table.add_column(col)
    chosen = set(p.config.features.events)
    for r in p.events.head(25).itertuples():
        row = [("* " if r.event in chosen else "  ") + r.event, f"{r.events:,}",
               f"{r.users_share:.1%}"]  # fmt: skip
        if p.basis == "outcomes":
            row += [f"{r.converters_share:.1%}", f"{r.others_share:.1%}", f"{r.ratio:.1f}x"]
        table.add_row(*row)
    _print(table)
    m = p.config.model
    click.echo(f"proposed: weighted model {m.version}, {len(m.signals)} signals (* above, "
               f"{m.signals[0].window_days}-day windows), threshold {m.threshold:.0f}: flags "
               f"{p.flagged.text()} of users as of {p.as_of:%Y-%m-%d}")  # fmt: skip
    if p.note:
        click.echo(f"note: {p.note}")
    if p.backtest is not None:
        s = p.backtest.summary
        for c in s["checks"]:
            judged = c["status"] if c["detail"] in ("", c["text"]) else c["detail"]
            click.echo(f"backtest {c['check']}: {c['text']} — {judged}")
        click.echo(f"backtest verdict: {s['verdict']}")
    written = propose.write(p, source, out_path)
    click.echo(f"written: {written}")
    click.echo(f"next: edit it, then pql validate --lake --config {written} and "
               f"pql backtest --config {written} --from ... --to ...")  # fmt: skip


@main.command()
@config_option
@click.option(
    "--day",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Score as of the end of this UTC day (default: the newest day extracted).",
)
def score(config_path, day) -> None:
    """Score every user as the DAG does and write the scores to the lake; no CRM call.

    Firmographics come from the enrichment cache in the lake (the DAG's enrich step fills it).
    """
    from pql import pipeline

    cfg = _load(config_path)
    try:
        day = day.date() if day else pipeline.newest_events_day(cfg)
        result = pipeline.score(cfg, day)
        new, sample = pipeline.new_pqls(cfg, day)
    except (LookupError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    share = result["pqls"] / result["users"] if result["users"] else 0.0
    click.echo(f"scored {result['users']:,} users as of the end of {day}: {result['pqls']:,} "
               f"flagged ({share:.1%}), {new:,} new PQLs; {result['pqas']:,} of "
               f"{result['accounts']:,} accounts qualified")  # fmt: skip
    if len(sample):
        table = Table(title=f"new PQLs of {day} (best first)")
        for col in ("email", "score", "qualified at", "reasons"):
            table.add_column(col)
        for r in sample.itertuples():
            table.add_row(str(r.email or "(no email)"), f"{r.score:.0f}",
                          f"{r.qualified_at:%Y-%m-%d %H:%M:%S}", r.reasons or "")  # fmt: skip
        _print(table)
    click.echo(f"written: {result['scores_path']}")


@main.command()
@config_option
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--every", "every_days", default=1, show_default=True, help="Replay every N days.")
@click.option("--target", type=click.Choice(["won", "meeting"]), default="won", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for CSV/HTML (default: <lake>/backtests/<version>_<from>_<to>).",
)
def backtest(config_path, first, last, every_days, target, out_dir) -> None:
    """Replay the configured PQL definition over history and judge it before shipping."""
    from pql.enrich import firmographics
    from pql.lake import Lake
    from pql.scoring import backtest as bt

    cfg = _load(config_path)
    first, last = first.date(), last.date()
    lake = Lake(cfg.lake.root)
    with Progress(console=console) as bar:
        job = bar.add_task(f"replaying {first}..{last}", total=None)
        try:
            result = bt.run(
                cfg, first, last, firmographics.read(lake), every_days=every_days, target=target,
                progress=lambda k, n: bar.update(job, completed=k, total=n),
            )  # fmt: skip
        except (LookupError, ValueError) as e:
            raise click.ClickException(str(e)) from None
    out_dir = out_dir or lake.root / "backtests" / f"{cfg.model.version}_{first}_{last}"
    bt.write(result, out_dir)
    s = result.summary

    table = Table(title=f"backtest {s['model']} {s['model_version']} {first}..{last} ({target})")
    for col in ("check", "figure", "target", "status"):
        table.add_column(col)
    for c in s["checks"]:
        table.add_row(c["check"], c["text"], c["target"], c["detail"] or c["status"])
    _print(table)
    click.echo(
        f"users {s['users']:,} ({s['mature_users']:,} mature: window closed by "
        f"{s['outcomes_known_until']}), PQLs {s['pqls']:,}; conversions {s['conversions']:,}, "
        f"caught {s['caught_share']}, {s['days_early']} early"
    )
    click.echo(f"PQL→{target} {s['pql_conversion']} vs non-PQL {s['non_pql_conversion']}; "
               f"lift {s['lift']}")  # fmt: skip
    bands = Table(title="conversion of mature users by best score band (95% CI)")
    for col in ("band", "converted", "95% CI"):
        bands.add_column(col)
    for b in result.bands.itertuples():
        ci = f"{b.conversion_low:.1%}-{b.conversion_high:.1%}" if b.users else ""
        bands.add_row(str(b.band), b.text, ci)
    _print(bands)
    sig = Table(title="signal discovery: done by converters before converting")
    for col in ("event", "converters", "non-converters", "ratio"):
        sig.add_column(col)
    for r in result.signals.head(8).itertuples():
        sig.add_row(r.event, f"{r.converters_share:.1%}", f"{r.non_converters_share:.1%}",
                    f"{r.ratio:.1f}x")  # fmt: skip
    _print(sig)
    click.echo(f"verdict: {s['verdict']}")
    click.echo(f"written: {out_dir}/report.html (and CSV files)")


@main.command()
@config_option
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Train on history up to this day (default: the newest day extracted).",
)
def train(config_path, until) -> None:
    """Train a predictive model version; promote it only if it beats the current one."""
    from datetime import UTC, datetime

    from pql import pipeline
    from pql.enrich import firmographics
    from pql.lake import Lake
    from pql.scoring import training

    cfg = _load(config_path)
    day = until.date() if until else pipeline.newest_events_day(cfg)
    moment = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    try:
        result = training.train(cfg, moment, firmographics.read(Lake(cfg.lake.root)))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    m = result["metrics"]
    click.echo(f"trained {result['version']} on {result['rows']:,} user-moments")
    click.echo("held-out: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    click.echo(("promoted: " if result["promoted"] else "not promoted: ")
               + str(result["comparison"].get("reason", "")))  # fmt: skip


def _crm(cfg):
    """The configured CRM's adapter, from its AIRFLOW_CONN_* variable."""
    from pql import connections, crm

    conn = connections.from_env(cfg.crm.connection_id)
    return crm.connect(cfg.crm, conn, outcomes=cfg.outcomes)


@main.command()
@config_option
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Scores of this day (default: the newest day extracted).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
def sync(config_path, day, dry_run) -> None:
    """Write changed scores to the CRM (or, with --dry-run, show what would change).

    Failed records from earlier runs are never in the ledger, so a run sends them again.
    """
    from pql import pipeline
    from pql.crm import SyncError

    cfg = _load(config_path)
    day = day.date() if day else pipeline.newest_events_day(cfg)
    try:
        result = pipeline.sync(cfg, day, _crm(cfg), dry_run=dry_run)
    except (LookupError, FileNotFoundError, ValueError, SyncError) as e:
        raise click.ClickException(str(e)) from None
    if not dry_run:
        click.echo(f"{day}: {result['written']:,} written, {result['unchanged']:,} unchanged, "
                   f"{result['failed']:,} failed (run {result['run']})")  # fmt: skip
        return
    click.echo(f"{day} (dry run): {result['would_write']:,} would be written, "
               f"{result['unchanged']:,} unchanged, nothing sent")  # fmt: skip
    for rec in result["sample"]:
        kind = "new" if rec["new_record"] else "update"
        click.echo(f"  {rec['email']} ({kind})")
        for field, (old, new) in rec["changes"].items():
            click.echo(f"    {field}: {old!r} -> {new!r}")


@main.command()
@config_option
def fresh(config_path) -> None:
    """One intraday run (README, "Speed to lead"): what arrived since the last run → the
    users it touched rescored → new PQLs and un-flags to the CRM → routing."""
    from pql import connections, events, notify, pipeline
    from pql.crm import SyncError

    cfg = _load(config_path)
    try:
        exports = {
            s.name: events.session(connections.from_env(s.connection_id))
            for s in cfg.intraday_sources()
        }
        rule = cfg.routing
        slack = None
        if rule.slack:
            slack = notify.slack_webhook(connections.from_env(rule.slack_connection_id))
        result = pipeline.fresh_cycle(cfg, exports, _crm(cfg), slack)
    except (LookupError, FileNotFoundError, ValueError, SyncError) as e:
        raise click.ClickException(str(e)) from None
    for name, e in result["extracted"].items():
        click.echo(f"{name}: {e['raw']:,} raw lines, {e['added']:,} new events "
                   f"({e['held_already']:,} held already), "
                   f"{e['quarantined']:,} quarantined")  # fmt: skip
    r = result["rescored"]
    click.echo(f"rescored {r['rescored']:,} of {r['touched']:,} touched users: "
               f"{r['new_pqls']:,} new PQLs, {r['unflagged']:,} un-flagged; "
               f"{r['pqls']:,} of {r['users']:,} users are PQLs")  # fmt: skip
    if "synced" in result:
        w = result["synced"]
        click.echo(f"CRM: {w['written']:,} written, {w.get('deferred', 0):,} small changes "
                   f"left for the daily sync, {w['failed']:,} failed")  # fmt: skip
    if "routed" in result:
        click.echo("routing: " + ", ".join(f"{k} {v}" for k, v in result["routed"].items()))


@main.command()
@config_option
@click.option("--week", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Any day of the week to report (weeks start on Monday).")  # fmt: skip
@click.option(
    "--full-pull",
    is_flag=True,
    help="Re-read every outcome, not only what changed since the last run.",
)
def report(config_path, week, full_pull) -> None:
    """Pull what the CRM changed (HubSpot or Salesforce) and write the week's conversion report
    (as the DAG does)."""
    from pql import pipeline
    from pql.crm import SyncError
    from pql.report import outcomes

    cfg = _load(config_path)
    start = outcomes.week_start(week.date())
    try:
        result = pipeline.weekly_report(cfg, start, _crm(cfg), full_pull=full_pull)
    except (LookupError, FileNotFoundError, ValueError, SyncError) as e:
        raise click.ClickException(str(e)) from None

    for line in result["summary"]:
        click.echo(line)
    click.echo(f"CRM pull ({result['pull']}): {result['pulled']:,} records read; "
               f"{result['meetings']:,} meetings, {result['won_deals']:,} won deals, "
               f"{result['sales_tasks']:,} completed sales tasks up to the week's end")  # fmt: skip
    click.echo(f"written: {result['report']}")


@main.group()
def events() -> None:
    """Look at the canonical events in the lake."""


@events.command("stats")
@config_option
@click.option("--source", "source_name", default=None)
@click.option("--by", type=click.Choice(["day", "event"]), default="day", show_default=True)
def events_stats(config_path, source_name, by) -> None:
    """Events per day (with duplicates and quarantined lines) or per event name."""
    from pql.events import stats

    cfg = _load(config_path)
    names = [source_name] if source_name else [s.name for s in cfg.sources]
    frame = (
        stats.per_day(cfg.lake.root, names)
        if by == "day"
        else stats.per_event(cfg.lake.root, names)
    )
    if frame.empty:
        console.print(f"no canonical events under {cfg.lake.root}")
        return
    table = Table(title=f"canonical events by {by}")
    for col in frame.columns:
        table.add_column(col, justify="left" if frame[col].dtype == object else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:,}" if isinstance(v, int) else str(v) for v in row])
    _print(table)
    if by == "day":
        for line in stats.retried(cfg.lake.root, names):
            click.echo(f"fetched again: {line}")


if __name__ == "__main__":
    main()
