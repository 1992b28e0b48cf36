"""`pql-sandbox`: the local emulators and the demo, for trying the pipeline without accounts.

A development tool beside the product: `pql` (pql.cli) never imports this package.

    pql-sandbox start [--empty]    emulators of Mixpanel, Amplitude, HubSpot, Salesforce, ...
    pql-sandbox env                AIRFLOW_CONN_* exports pointing the pipeline at them
    pql-sandbox crm contacts       what the sandbox CRM holds
    pql-sandbox demo               a world, the real DAGs over it, the weekly report
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
console = Console(soft_wrap=True)


@click.group()
def main() -> None:
    """Local emulators of the vendors' APIs, seeded with a synthetic world, and the demo."""


# --- sandbox -------------------------------------------------------------------------------


def _sandbox_root(root: Path | None) -> Path:
    from sandbox.state import default_state_dir

    return (root or default_state_dir()).resolve()


root_option = click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Sandbox state folder (default: $PQL_SANDBOX_DIR or var/sandbox).",
)


@main.command("start")
@root_option
@click.option("--seed", default=42, show_default=True, help="World seed.")
@click.option("--users", default=2000, show_default=True)
@click.option("--days", default=42, show_default=True, help="Days of history, ending yesterday.")
@click.option("--port", default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option(
    "--crm",
    type=click.Choice(["hubspot", "salesforce", "both"]),
    default="hubspot",
    show_default=True,
    help="Which CRM emulator a new world's CRM records go to.",
)
@click.option("--empty", is_flag=True,
              help="Start the emulators with no world: nothing in Mixpanel, Amplitude or the "
              "CRMs (load your own export and records).")  # fmt: skip
def sandbox_start(root, seed, users, days, port, crm, empty) -> None:
    """Start the sandbox server (building a world first if the folder has none, unless
    --empty)."""
    crms = ("hubspot", "salesforce") if crm == "both" else (crm,)
    if empty:
        from sandbox import server

        info = server.start(_sandbox_root(root), port)
    else:
        info = _start_sandbox(_sandbox_root(root), seed, users, days, port, crms)
    console.print(
        f"sandbox running at {info['base_url']} (pid {info['pid']}, state {info['root']})"
    )
    console.print('point the pipeline at it with:  eval "$(pql-sandbox env)"')


def _start_sandbox(
    root: Path, seed: int, users: int, days: int, port: int = 0, crms=("hubspot",)
) -> dict:
    from sandbox import seed as seeding
    from sandbox import server
    from sandbox.state import SandboxState
    from sandbox.world import WorldSpec

    if not (root / "world" / "truth.parquet").exists():
        spec = WorldSpec(
            seed=seed, users=users, days=days, start=date.today() - timedelta(days=days + 1)
        )
        with Progress(console=console, transient=True) as bar:
            job = bar.add_task(f"building world (seed {seed})", total=users)
            counts = seeding.build(
                SandboxState.open(root), spec, progress=lambda n: bar.advance(job, n), crms=crms
            )
        console.print("world: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return server.start(root, port)


@main.command("stop")
@root_option
def sandbox_stop(root) -> None:
    """Stop the sandbox server (its state stays for inspection)."""
    from sandbox import server

    console.print("stopped" if server.stop(_sandbox_root(root)) else "not running")


@main.command("status")
@root_option
def sandbox_status(root) -> None:
    """Is the sandbox running, where, and what does its CRM hold."""
    from sandbox import server

    info = server.status(_sandbox_root(root))
    if not info:
        console.print("not running")
        sys.exit(3)
    console.print(f"running at {info['base_url']} (pid {info['pid']}, state {info['root']})")


@main.command("env")
@root_option
def sandbox_env(root) -> None:
    """Print AIRFLOW_CONN_* exports that point the pipeline at the running sandbox."""
    from sandbox import server
    from sandbox.server import connection_env
    from sandbox.state import SandboxState

    r = _sandbox_root(root)
    info = server.status(r)
    if not info:
        raise click.ClickException("the sandbox is not running: pql-sandbox start")
    for k, v in connection_env(SandboxState.open(r), info["base_url"]).items():
        click.echo(f"export {k}='{v}'")


@main.command("crm")
@root_option
@click.argument(
    "object_type",
    default="contacts",
    type=click.Choice(["contacts", "companies", "deals", "meetings"]),
)
@click.option("--pql-only", is_flag=True, help="Only contacts flagged as PQLs.")
@click.option("--limit", default=20, show_default=True)
def sandbox_crm(root, object_type, pql_only, limit) -> None:
    """Show what the sandbox CRM holds (read straight from its SQLite file)."""
    from sandbox.hubspot import HubSpotStore
    from sandbox.state import SandboxState

    rows = HubSpotStore(SandboxState.open(_sandbox_root(root))).list(object_type)
    if pql_only:
        rows = [r for r in rows if r["properties"].get("pql_flag") == "true"]
    rows.sort(key=lambda r: -float(r["properties"].get("pql_score") or -1))
    columns = {
        "contacts": ["email", "pql_score", "pql_flag", "pql_qualified_at", "pql_reasons"],
        "companies": ["domain", "name", "numberofemployees", "industry", "country"],
        "deals": ["dealname", "dealstage", "amount", "closedate"],
        "meetings": ["hs_timestamp", "hs_meeting_title", "hs_meeting_outcome"],
    }[object_type]
    table = Table(
        title=f"{object_type}: {len(rows):,} record(s)" + (" flagged PQL" if pql_only else "")
    )
    for c in ["id", *columns]:
        table.add_column(c, overflow="fold")
    for r in rows[:limit]:
        table.add_row(str(r["id"]), *[r["properties"].get(c) or "" for c in columns])
    console.print(table)


# --- demo ----------------------------------------------------------------------------------


@main.command()
@click.option("--seed", default=42, show_default=True)
@click.option("--users", default=1500, show_default=True)
@click.option("--days", default=56, show_default=True, help="Simulated days to run.")
@click.option("--keep-running", is_flag=True, help="Leave the sandbox up afterwards.")
@click.option("--crm", type=click.Choice(["hubspot", "salesforce"]), default="hubspot",
              show_default=True, help="Which sandbox CRM the pipeline writes to.")  # fmt: skip
def demo(seed, users, days, keep_running, crm) -> None:
    """Build a world, run extract + score/sync for each day and the weekly report, summarise."""
    from sandbox import server
    from sandbox.server import connection_env
    from sandbox.state import SandboxState

    base = ROOT / "var" / "demo"
    if base.exists():
        server.stop(base / "sandbox")
        shutil.rmtree(base)
    root, lake, home = base / "sandbox", base / "lake", base / "airflow"
    home.mkdir(parents=True)
    info = _start_sandbox(root, seed, users, days, crms=(crm,))
    start = date.today() - timedelta(days=days + 1)
    env = {
        **os.environ,
        "PQL_CONFIG": str(_demo_config(base, crm)),
        **connection_env(SandboxState.open(root), info["base_url"]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "PQL_LAKE": str(lake),
    }
    summary_file = base / "summary.json"
    log_path = base / "airflow.log"
    cmd = [
        sys.executable,
        "-m",
        "pql_airflow.demo",
        "--start",
        start.isoformat(),
        "--days",
        str(days),
        "--summary",
        str(summary_file),
    ]
    try:
        with open(log_path, "w") as airflow_log, Progress(console=console) as bar:
            job = bar.add_task(f"Airflow dag.test(): {days} days from {start}", total=days + 1)
            # The runner sends Airflow's own logging to the log file, progress lines to us.
            proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=airflow_log, text=True
            )
            for line in proc.stdout:
                bar.update(job, completed=int(line.split()[0]), description=line.strip())
            proc.wait()
        if proc.returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
            raise click.ClickException(f"the demo's DAG runs failed; log {log_path}:\n{tail}")
        _print_summary(json.loads(summary_file.read_text()), lake, root, crm)
        console.print(f"Airflow's task logs: {log_path}")
    finally:
        if not keep_running:
            server.stop(root)


DEMO_WINDOW_DAYS = 28  # a short attribution window, so a few weeks hold mature cohorts


def _demo_config(base: Path, crm: str) -> Path:
    """The shipped config with a 28-day attribution window (the demo's weeks then have mature
    cohorts to report); for Salesforce, with the default Salesforce target."""
    from pql import config

    text = config.DEFAULT_CONFIG.read_text()
    window = "  attribution_window_days: 90\n"
    if window not in text:
        raise click.ClickException(f"{config.DEFAULT_CONFIG}: no '{window.strip()}' to shorten")
    text = text.replace(window, f"  attribution_window_days: {DEMO_WINDOW_DAYS}  # the demo's\n")
    if crm != "hubspot":
        head, _, rest = text.partition("\ncrm:\n")
        tail = rest[rest.index("\nrouting:") :]
        text = f"{head}\ncrm:\n  kind: {crm}\n{tail}"
    path = base / "pql.yaml"  # its only relative path, lake.root, is overridden by PQL_LAKE
    path.write_text(text)
    return path


def _print_summary(run: dict, lake: Path, root: Path, crm: str = "hubspot") -> None:
    import duckdb
    import pandas as pd

    from pql.lake import Lake

    lk = Lake(lake)
    with duckdb.connect() as con:
        events = con.sql(f"SELECT count(*) FROM read_parquet('{lk.events_glob()}')").fetchall()[0][
            0
        ]
    scores = pd.read_parquet(lk.partitions("scores")[-1][1] / "scores.parquet")
    ledger = pd.read_parquet(lk.sync(crm) / "ledger" / "ledger.parquet")
    report_dir = lk.reports(date.fromisoformat(run["week"]))
    summary = json.loads((report_dir / "summary.json").read_text())
    table = Table(title="PQL demo summary", show_header=False)
    table.add_row("canonical events processed", f"{events:,}")
    table.add_row("users scored", f"{len(scores):,}")
    table.add_row(
        "PQLs now / ever qualified",
        f"{int(scores['flag'].sum()):,} / {int(scores['qualified_at'].notna().sum()):,}",
    )
    table.add_row(f"{crm} records written", f"{len(ledger):,}")
    cohorts = pd.read_csv(report_dir / "cohorts.csv").groupby("value")
    full = int(((cohorts["still_open"].sum() == 0) & (cohorts["mature_users"].sum() > 0)).sum())
    part = int(((cohorts["still_open"].sum() > 0) & (cohorts["mature_users"].sum() > 0)).sum())
    table.add_row(
        "weekly cohorts mature",
        f"{full} of {cohorts.ngroups}, {part} partly (a {DEMO_WINDOW_DAYS}-day attribution "
        "window; the younger ones are still inside it: too early to judge)",
    )
    table.add_row("DAG run time", f"{run['seconds']:.0f} s")
    console.print(table)
    for line in summary["lines"]:
        console.print(f"- {line}", soft_wrap=True)
    console.print(f"Report for leadership: {report_dir / 'index.html'}")
    if crm == "hubspot":
        console.print(f"Look at the sandbox CRM: pql-sandbox crm contacts --pql-only --root {root}")


if __name__ == "__main__":
    main()
