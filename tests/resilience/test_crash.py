"""Crash: `pql sync` killed with SIGKILL at random points, then resumed by the next run.

The sandbox runs as its own process (as in production, the CRM outlives the worker). A worker
process (crash_worker.py) forks one child per run; each trial kills it at a seeded random
moment: after a random time, at the n-th rename into place of an atomic write (the lake's most
delicate instants), or at the n-th piece of an HTTP request going out. Right after each kill the
lake must hold whole files only; after the resume, each CRM must hold exactly the computed
values with one record per email (no duplicate Leads from creates that were answered but not
recorded, no update lost between the CRM's answer and the ledger).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests

from pql import config
from pql.lake import Lake
from sandbox import server
from sandbox.server import connection_env
from sandbox.state import SandboxState
from tests.resilience.helpers import (
    ScoreWorld,
    expected,
    hubspot_contacts,
    mismatches,
    salesforce_people,
)

TRIALS = 20
WORKER = Path(__file__).with_name("crash_worker.py")
ROOT = Path(__file__).resolve().parents[2]
# A killed run's requests may still be finishing inside the CRM; the next attempt comes after
# Airflow's retry delay (minutes), which this stands for.
RETRY_DELAY_S = 0.3
# The instants around the lake's commits: a rename into place, a file written in a temporary
# folder (the ledger's state), the old version removed after a swap.
COMMIT = ["os.rename", "open", "shutil.rmtree"]


def _config(path: Path, crm: str) -> Path:
    text = config.DEFAULT_CONFIG.read_text()
    head, _, rest = text.partition("\ncrm:\n")
    tail = rest[rest.index("\nrouting:") :]
    body = "  kind: hubspot\n" if crm == "hubspot" else "  kind: salesforce\n  bulk_threshold: 60\n"
    path.write_text(f"{head}\ncrm:\n{body}{tail}")
    return path


class Worker:
    """crash_worker.py in its own process; run() forks one `pql sync` and maybe kills it."""

    def __init__(self, env: dict, log: Path):
        self.log = open(log, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, env=env, cwd=ROOT, text=True,
        )  # fmt: skip

    def run(self, day, kill_on=None, kill_at=0, kill_after: float | None = None) -> dict:
        cmd = {"day": day.isoformat(), "kill_on": kill_on, "kill_at": kill_at}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                os.kill(pid, signal.SIGKILL)
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def crash_env(tmp_path_factory):
    """A sandbox server process, two lakes and configs (one per CRM), and a worker for each."""
    tmp = tmp_path_factory.mktemp("crash")
    root = tmp / "sandbox"
    info = server.start(root)
    try:
        state = SandboxState.open(root)
        state.base_url, state.salesforce_url = info["base_url"], info["salesforce_url"]
        requests.post(f"{state.base_url}/_sandbox/settings", timeout=10,
                      json={"hubspot_latency_ms": 10, "salesforce_latency_ms": 10,
                            "hubspot_search_per_second": 1000})  # fmt: skip
        workers = {}
        for crm in ("hubspot", "salesforce"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
            env.update(connection_env(state, state.base_url))
            env.update(PQL_CONFIG=str(_config(tmp / f"{crm}.yaml", crm)),
                       PQL_LAKE=str(tmp / f"lake-{crm}"))  # fmt: skip
            env["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT / "include"), str(ROOT / "plugins"), str(ROOT), env.get("PYTHONPATH", "")]
            )
            workers[crm] = (Worker(env, tmp / f"worker-{crm}.log"), Lake(tmp / f"lake-{crm}"))
        yield state, workers, tmp
        for worker, _ in workers.values():
            worker.close()
    finally:
        server.stop(root)


def _lake_is_whole(lake: Lake, crm: str, had_ledger: bool) -> None:
    """Every run folder and the ledger are complete; a ledger that existed still exists."""
    base = lake.sync(crm)
    for run in base.glob("run=*"):
        assert (run / "results.parquet").exists(), run
        pd.read_parquet(run / "results.parquet")
    ledger = base / "ledger"
    if had_ledger:
        assert ledger.is_dir(), f"the ledger vanished: {sorted(p.name for p in base.iterdir())}"
    if ledger.exists():
        frame = pd.read_parquet(ledger / "ledger.parquet")
        assert frame["email"].is_unique
        json.loads((ledger / "state.json").read_text())


def _holds(state, crm: str, scores: pd.DataFrame) -> None:
    held, counts = hubspot_contacts(state) if crm == "hubspot" else salesforce_people(state)
    want = expected(scores)
    assert not mismatches(held, want), list(mismatches(held, want).items())[:3]
    assert set(held) == set(want)
    assert max(counts.values()) == 1, [e for e, n in counts.items() if n > 1]


def test_sync_killed_at_random_points_resumes_without_duplicates_or_losses(crash_env):
    state, workers, _ = crash_env
    rng = random.Random(20261123)
    worlds = {crm: ScoreWorld(seed=i, users=60, signups_per_day=4, change_share=0.15,
                              version_change_day=7)
              for i, crm in enumerate(("hubspot", "salesforce"))}  # fmt: skip
    killed = {"time": 0, "commit": 0, "http.client.send": 0}
    for trial in range(TRIALS):
        crm = ("hubspot", "salesforce")[trial % 2]
        worker, lake = workers[crm]
        scores = worlds[crm].next_day()
        day = worlds[crm].start + timedelta(days=worlds[crm].day_no)
        folder = lake.scores(day)
        folder.mkdir(parents=True, exist_ok=True)
        scores.to_parquet(folder / "scores.parquet", index=False)
        had_ledger = (lake.sync(crm) / "ledger" / "ledger.parquet").exists()
        how = rng.choice(["time", "commit", "commit", "http.client.send"])
        if how == "time":
            ended = worker.run(day, kill_after=rng.uniform(0.05, 1.0))
        elif how == "commit":  # the run folder, then the ledger, put in place
            ended = worker.run(day, kill_on=COMMIT, kill_at=rng.randint(1, 3))
        else:  # a run sends 10-30 pieces of requests
            ended = worker.run(day, kill_on=[how], kill_at=rng.randint(1, 15))
        if ended["signal"] == signal.SIGKILL:
            killed[how] += 1
        else:
            assert ended["exit"] == 0, f"trial {trial}: the run failed without being killed"
        _lake_is_whole(lake, crm, had_ledger)
        time.sleep(RETRY_DELAY_S)
        resumed = worker.run(day)
        assert resumed["exit"] == 0, f"trial {trial}: the resumed run failed ({crm})"
        _lake_is_whole(lake, crm, True)
        _holds(state, crm, scores)
    assert sum(killed.values()) >= TRIALS * 0.6, killed
    assert all(killed.values()), killed
