"""The production topology of docker-compose.yaml, run on this machine without Docker.

PostgreSQL (a fresh cluster in a temporary folder) and Redis on their own ports, then
deploy/airflow-init.sh (schema, pools, admin password) and every long-running Airflow service of
the compose file (api-server, scheduler, dag-processor, triggerer, one Celery worker) as local
processes. The environment is the compose file's own `x-airflow-env`; only hosts, ports, paths,
secrets and the worker's concurrency are swapped (LOCAL_KEYS), so what runs here is what the
containers run. The compose health checks are run against it too.

`run_pipeline` then drives the pipeline as an operator would, through the REST API v2 with a
token from /auth/token: unpause pql_score_sync, trigger the Mixpanel extract for the interval the
scheduler would run next, unpause it, and wait; the extract's Asset event makes the scheduler
start pql_score_sync, whose scores must end up on the sandbox's HubSpot contacts.

    python deploy/topology.py [--users N --days N --seed S] [--keep-running]   (./dev.sh topology)

Every process runs in its own process group and every group is killed on the way out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
INIT_SCRIPT = ROOT / "deploy" / "airflow-init.sh"
HOST = "127.0.0.1"
EXTRACT_DAG = "pql_extract_mixpanel"
SCORE_DAG = "pql_score_sync"

# Keys of the compose environment that name a container host or path: replaced here.
LOCAL_KEYS = {
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    "PQL_CONFIG",
    "PQL_LAKE",
}


class TopologyError(RuntimeError):
    """A component is missing, did not start, or the pipeline did not finish."""


# --- the compose file ---------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_environment(doc: dict | None = None) -> dict[str, str]:
    """The environment every Airflow container gets (x-airflow-env)."""
    return {k: str(v) for k, v in (doc or compose())["x-airflow-env"].items()}


def compose_components(doc: dict | None = None) -> dict[str, dict]:
    """The long-running Airflow services (a one-word or two-word `airflow` subcommand)."""
    services = (doc or compose())["services"]
    return {
        name: svc
        for name, svc in services.items()
        if name.startswith("airflow-") and isinstance(svc.get("command"), str)
    }


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def find_binary(name: str, hint: str) -> str:
    """A server binary from PATH, or from Debian's PostgreSQL folders; else a clear error."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1]
    raise TopologyError(f"`{name}` was not found on PATH: {hint}")


class Process:
    """A server in its own process group (start_new_session), logging to a file."""

    def __init__(
        self, name: str, argv: list[str], env: dict, log: Path, stop_signal=signal.SIGTERM
    ):
        self.name, self.log, self.stop_signal = name, log, stop_signal
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)

    def check(self) -> None:
        if not self.alive():
            raise TopologyError(
                f"{self.name} exited with code {self.popen.returncode}; "
                f"the end of {self.log}:\n{self.tail()}"
            )


def group_members(pgids: set[int]) -> list[int]:
    """Pids of the live processes in these process groups (from /proc; elsewhere the groups)."""
    if not Path("/proc/self/stat").exists():
        alive = []
        for pgid in pgids:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, 0)
                alive.append(pgid)
        return alive
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            members.append(int(stat.parent.name))
    return members


def stop_all(processes: list[Process], grace: float = 10.0) -> None:
    """Signal every group to stop, wait for them to empty, SIGKILL whatever is left.

    (After SIGTERM the api-server's process stays once its uvicorn server has finished.)
    """
    for p in processes:
        p.signal(p.stop_signal)
    pgids = {p.pgid for p in processes}
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for p in processes:
            p.popen.poll()  # reap the group leaders
        if not group_members(pgids):
            return
        time.sleep(0.2)
    for p in processes:
        p.signal(signal.SIGKILL)
    for p in processes:
        with suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=10)


def _wait(what: str, probe, timeout: float, processes: list[Process]) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in processes:
            p.check()
        try:
            if probe():
                return
        except TopologyError:
            raise
        except Exception as exc:  # a probe fails until the server is up
            last = exc
        time.sleep(0.5)
    raise TopologyError(f"{what} not ready after {timeout:.0f}s (last error: {last})")


# --- the topology -------------------------------------------------------------------------


class LocalTopology:
    """PostgreSQL, Redis and the Airflow components of docker-compose.yaml, as local processes.

    `connections` are the AIRFLOW_CONN_* variables (what .env holds for compose). Use as a
    context manager: everything it started is stopped, by process group, on the way out.
    """

    def __init__(self, workdir: Path, lake: Path, connections: dict[str, str], say=print):
        self.workdir, self.lake, self.connections, self.say = Path(workdir), lake, connections, say
        self.home = self.workdir / "airflow"
        self.logs = self.workdir / "logs"
        self.ports = {
            k: free_port()
            for k in ("postgres", "redis", "api", "scheduler_health", "worker_logs", "trigger_logs")
        }
        self.admin_password = secrets.token_urlsafe(16)
        self.redis_password = secrets.token_urlsafe(16)
        self.infra: list[Process] = []  # postgres, redis
        self.airflow: list[Process] = []
        self.pg_root: Path | None = None
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports['api']}"

    def __enter__(self) -> LocalTopology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- start

    def start(self, timeout: float = 150) -> None:
        t0 = time.monotonic()
        for d in (self.home, self.logs, self.lake):
            d.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        self._start_redis()
        self.timings["postgres_redis"] = time.monotonic() - t0
        self.env = self.airflow_env()
        t1 = time.monotonic()
        self.say("airflow-init: db migrate, pools import, admin password")
        init = Process("airflow-init", ["bash", str(INIT_SCRIPT)], self.env, self.logs / "init.log")
        try:
            init.popen.wait(timeout=300)
        except subprocess.TimeoutExpired:
            stop_all([init])
            raise TopologyError(
                f"deploy/airflow-init.sh still running after 300s:\n{init.tail()}"
            ) from None
        if init.popen.returncode != 0:
            raise TopologyError(
                f"deploy/airflow-init.sh failed ({init.popen.returncode}):\n{init.tail()}"
            )
        self.timings["init"] = time.monotonic() - t1
        t2 = time.monotonic()
        for name, svc in compose_components().items():
            argv = [sys.executable, "-m", "airflow", *svc["command"].split()]
            self.say(f"{name}: airflow {svc['command']}")
            self.airflow.append(Process(name, argv, self.env, self.logs / f"{name}.log"))
        _wait("the Airflow components", self._healthy, timeout, self.infra + self.airflow)
        self.timings["components_healthy"] = time.monotonic() - t2
        self.say(f"Airflow is up at {self.api_url} (user admin) in {time.monotonic() - t0:.0f}s")

    def _start_postgres(self) -> None:
        hint = "install PostgreSQL (Debian: apt-get install postgresql; ./dev.sh does it as root)"
        initdb, postgres = find_binary("initdb", hint), find_binary("postgres", hint)
        self.pg_root = Path(tempfile.mkdtemp(prefix="pql-topology-pg-"))
        prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise TopologyError(
                    "running as root, and PostgreSQL refuses root: there is no `postgres` user "
                    f"to run it as ({hint})"
                ) from None
            os.chown(self.pg_root, user.pw_uid, user.pw_gid)
            prefix = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
        data = self.pg_root / "data"
        done = subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"]
            + ["-E", "UTF8", "--locale=C", "--no-sync"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.pg_root,
        )
        if done.returncode != 0:
            raise TopologyError(f"initdb failed:\n{done.stdout[-3000:]}")
        port = self.ports["postgres"]
        # A throwaway cluster: no fsync. Airflow's components hold up to ~60 connections.
        argv = [*prefix, postgres, "-D", str(data), "-p", str(port), "-k", str(self.pg_root)]
        for setting in ("listen_addresses=127.0.0.1", "fsync=off", "max_connections=200"):
            argv += ["-c", setting]
        log = self.logs / "postgres.log"
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave).
        self.infra.append(Process("postgres", argv, dict(os.environ), log, signal.SIGINT))

        def ready() -> bool:
            import psycopg2

            conn = psycopg2.connect(host=HOST, port=port, user="postgres", dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
                if not cur.fetchone():
                    cur.execute("CREATE DATABASE airflow")
            conn.close()
            return True

        _wait("PostgreSQL", ready, 60, self.infra)
        self.say(f"postgres: 127.0.0.1:{port}")

    def _start_redis(self) -> None:
        server = find_binary(
            "redis-server",
            "install Redis (Debian: apt-get install redis-server; ./dev.sh does it as root)",
        )
        port = self.ports["redis"]
        argv = [server, "--port", str(port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "no", "--requirepass", self.redis_password]
        self.infra.append(Process("redis", argv, dict(os.environ), self.logs / "redis.log"))

        def ready() -> bool:
            import redis

            return redis.Redis(host=HOST, port=port, password=self.redis_password).ping()

        _wait("Redis", ready, 30, self.infra)
        self.say(f"redis: 127.0.0.1:{port}")

    def airflow_env(self) -> dict[str, str]:
        """The compose environment with this machine's hosts, ports, paths and fresh secrets."""
        from cryptography.fernet import Fernet

        pg, api = self.ports["postgres"], self.ports["api"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PQL_"))}
        env.update(compose_environment())
        local = {
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                self.home / "auth" / "passwords.json"
            ),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@{HOST}:{pg}/airflow",
            "AIRFLOW__CELERY__BROKER_URL": (
                f"redis://:{self.redis_password}@{HOST}:{self.ports['redis']}/0"
            ),
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://postgres@{HOST}:{pg}/airflow",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",  # a 2-core machine
            "PQL_CONFIG": str(ROOT / "config" / "pql.yaml"),
            "PQL_LAKE": str(self.lake),
        }
        assert set(local) == LOCAL_KEYS
        env.update(local)
        env.update(
            {
                # What .env holds for compose:
                **self.connections,
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW_ADMIN_PASSWORD": self.admin_password,
                # What each container has to itself: a home, ports, a hostname.
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__API__HOST": HOST,
                "AIRFLOW__API__PORT": str(api),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(
                    self.ports["scheduler_health"]
                ),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports["worker_logs"]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["trigger_logs"]),
                # In a container getfqdn() is the container's hostname, as $HOSTNAME and Celery's
                # node name are; here they differ, so record jobs under the plain hostname.
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname",
                "PQL_HOME": str(ROOT),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                "PYTHONPATH": os.pathsep.join(
                    [str(ROOT / "include"), str(ROOT / "plugins")]
                    + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
                ),
            }
        )
        leftover = {k: env[k] for k in compose_environment() if "${" in env[k] or "/opt/" in env[k]}
        if leftover:
            raise TopologyError(f"compose settings with container values left: {leftover}")
        return env

    def _healthy(self) -> bool:
        health = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
        return all(
            health[part]["status"] == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def healthchecks(self, timeout: float = 120) -> dict[str, str]:
        """Each compose service's own health check, run against the local processes.

        Returns {service: "ok" | what failed}. HTTP checks go to the local ports; shell checks
        (airflow jobs check, celery inspect ping) run with HOSTNAME set to this machine's.
        """
        local_urls = {
            "localhost:8080": f"{HOST}:{self.ports['api']}",
            "localhost:8974": f"{HOST}:{self.ports['scheduler_health']}",
        }
        env = {**self.env, "HOSTNAME": socket.gethostname()}
        results: dict[str, str] = {}
        shells: dict[str, subprocess.Popen] = {}
        for name, svc in compose_components().items():
            test = svc["healthcheck"]["test"]
            if test[0] == "CMD" and test[1] == "curl":
                url = test[-1]
                for k, v in local_urls.items():
                    url = url.replace(k, v)
                try:
                    r = requests.get(url, timeout=10)
                    results[name] = "ok" if r.ok else f"{url}: HTTP {r.status_code}"
                except requests.RequestException as exc:
                    results[name] = f"{url}: {exc}"
            elif test[0] == "CMD-SHELL":
                cmd = test[1].replace("$$", "$")  # compose's escape for a literal $
                shells[name] = subprocess.Popen(
                    ["bash", "-c", cmd],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            else:
                results[name] = f"unsupported health check {test!r}"
        for name, proc in shells.items():
            try:
                out, _ = proc.communicate(timeout=timeout)
                results[name] = "ok" if proc.returncode == 0 else out.strip()[-800:]
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                results[name] = f"timed out after {timeout:.0f}s"
        return results

    # -- stop

    def pgids(self) -> set[int]:
        return {p.pgid for p in self.infra + self.airflow}

    def stop(self) -> None:
        # Airflow first (a warm Celery shutdown, jobs marked ended), then Redis and PostgreSQL.
        if self.airflow:
            self.say("stopping the Airflow components")
            stop_all(self.airflow)
        if self.infra:
            self.say("stopping Redis and PostgreSQL")
            stop_all(self.infra)
            self.say("stopped")
        if self.pg_root:
            shutil.rmtree(self.pg_root, ignore_errors=True)
            self.pg_root = None

    # -- REST API v2

    def api(self) -> Api:
        return Api(self.api_url, "admin", self.admin_password)


class Api:
    """The REST API v2 with a bearer token from /auth/token (simple auth manager)."""

    def __init__(self, base: str, username: str, password: str):
        self.base = base
        self.session = requests.Session()
        self.session.trust_env = False
        r = self.session.post(
            f"{base}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        if r.status_code not in (200, 201):
            raise TopologyError(f"POST /auth/token answered {r.status_code}: {r.text[:300]}")
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def call(self, method: str, path: str, ok=(200, 201), **kwargs):
        r = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        if r.status_code not in ok:
            raise TopologyError(f"{method} /api/v2{path} answered {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def get(self, path: str, **kwargs):
        return self.call("GET", path, **kwargs)


# --- the pipeline through the REST API ----------------------------------------------------


def _run_report(api: Api, dag_id: str, run: dict) -> str:
    """Task states of a run, with the log of each failed task (for an error message)."""
    path = f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances"
    lines = [f"{dag_id} run {run['dag_run_id']}: {run['state']}"]
    for ti in api.get(path)["task_instances"]:
        lines.append(f"  {ti['task_id']}: {ti['state']}")
        if ti["state"] in ("failed", "upstream_failed", "up_for_retry") and ti["try_number"]:
            log = api.call(
                "GET",
                f"{path}/{ti['task_id']}/logs/{ti['try_number']}",
                params={"full_content": "true"},
                headers={"Accept": "application/json"},
                ok=(200, 404),
            )
            content = (log or {}).get("content") or []
            text = [c.get("event", str(c)) if isinstance(c, dict) else str(c) for c in content]
            lines += ["    " + t for t in text[-25:]]
    return "\n".join(lines)


def _wait_run(api: Api, topo: LocalTopology, dag_id: str, find, deadline: float) -> dict:
    """Poll until the run `find(runs)` picks has finished; fail on anything but success."""
    run = None
    while time.monotonic() < deadline:
        for p in topo.infra + topo.airflow:
            p.check()
        runs = api.get(f"/dags/{dag_id}/dagRuns", params={"limit": 50})["dag_runs"]
        run = find(runs)
        if run and run["state"] == "success":
            return run
        if run and run["state"] == "failed":
            raise TopologyError(_run_report(api, dag_id, run))
        time.sleep(1)
    detail = _run_report(api, dag_id, run) if run else f"no {dag_id} run was created"
    raise TopologyError(f"timed out waiting for {dag_id}:\n{detail}")


def run_pipeline(topo: LocalTopology, timeout: float = 240, say=print) -> dict:
    """Extract → (Asset) → score and sync, through the REST API v2; returns what happened."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    api = topo.api()
    pools = {p["name"] for p in api.get("/pools", params={"limit": 100})["pools"]}
    missing = {"pql_mixpanel_export", "pql_crm_api"} - pools
    if missing:
        raise TopologyError(f"pools missing after airflow-init: {sorted(missing)}")

    def parsed() -> bool:
        errors = api.get("/importErrors")
        if errors["total_entries"]:
            raise TopologyError(f"DAG import errors: {errors['import_errors']}")
        dags = {d: api.call("GET", f"/dags/{d}", ok=(200, 404)) for d in (EXTRACT_DAG, SCORE_DAG)}
        # Serialized, with the next interval the scheduler would run computed.
        return all(dag.get("dag_id") == d for d, dag in dags.items()) and bool(
            dags[EXTRACT_DAG].get("next_dagrun_data_interval_end")
        )

    _wait("the DAGs (dag-processor)", parsed, max(5, deadline - time.monotonic()), topo.airflow)
    parsed_at = time.monotonic() - t0
    # The score DAG listens for the Asset only while it is unpaused.
    api.call("PATCH", f"/dags/{SCORE_DAG}", json={"is_paused": False})
    # The interval the scheduler would run next: triggering it first means the scheduler finds
    # the run there when the DAG is unpaused and does not start a second one for it.
    dag = api.get(f"/dags/{EXTRACT_DAG}")
    start, end = dag["next_dagrun_data_interval_start"], dag["next_dagrun_data_interval_end"]
    if not (start and end and dag["next_dagrun_logical_date"]):
        raise TopologyError(f"{EXTRACT_DAG} has no next run: {dag}")
    run_id = f"manual__topology__{end}"
    say(f"trigger {EXTRACT_DAG} for {start} .. {end}")
    api.call(
        "POST",
        f"/dags/{EXTRACT_DAG}/dagRuns",
        json={
            "dag_run_id": run_id,
            "logical_date": dag["next_dagrun_logical_date"],
            "data_interval_start": start,
            "data_interval_end": end,
            "note": "deploy/topology.py",
        },
    )
    api.call("PATCH", f"/dags/{EXTRACT_DAG}", json={"is_paused": False})
    t1 = time.monotonic()
    _wait_run(
        api,
        topo,
        EXTRACT_DAG,
        lambda runs: next((r for r in runs if r["dag_run_id"] == run_id), None),
        deadline,
    )
    extract_s = time.monotonic() - t1
    say(f"{EXTRACT_DAG} {run_id}: success in {extract_s:.0f}s")
    t2 = time.monotonic()
    score = _wait_run(
        api,
        topo,
        SCORE_DAG,
        lambda runs: next((r for r in runs if r["run_type"] == "asset_triggered"), None),
        deadline,
    )
    score_s = time.monotonic() - t2
    say(f"{SCORE_DAG} {score['dag_run_id']} (asset-triggered): success in {score_s:.0f}s")
    extract_runs = api.get(f"/dags/{EXTRACT_DAG}/dagRuns")["dag_runs"]
    day = datetime.fromisoformat(end).astimezone(UTC).date() - timedelta(days=1)
    return {
        "day": day.isoformat(),
        "extract_run": run_id,
        "extract_runs": len(extract_runs),
        "score_run": score["dag_run_id"],
        "score_run_type": score["run_type"],
        "seconds": {
            "dags_parsed": round(parsed_at, 1),
            "extract": round(extract_s, 1),
            "score_sync": round(score_s, 1),
        },
    }


# --- the sandbox --------------------------------------------------------------------------


@contextmanager
def sandbox(root: Path, seed: int, users: int, days: int):
    """A sandbox (its own process) seeded with a world that ends yesterday (UTC).

    Yields (state, connections, started): the AIRFLOW_CONN_* variables are known at once, the
    server starts in the background (`started.result()` waits for it). Stopped on the way out.
    """
    from sandbox import seed as seeding
    from sandbox import server
    from sandbox.server import connection_env
    from sandbox.state import SandboxState
    from sandbox.world import WorldSpec

    today = datetime.now(UTC).date()
    spec = WorldSpec(
        seed=seed, start=today - timedelta(days=days), days=days, users=users, accounts=users // 5
    )
    state = SandboxState.open(root)
    seeding.build(state, spec)
    port = free_port()
    connections = connection_env(state, f"http://{HOST}:{port}")
    pool = ThreadPoolExecutor(1)
    started = pool.submit(server.start, root, port)
    try:
        yield state, connections, started
    finally:
        with suppress(Exception):
            info = started.result()
            server.stop(root)
            with suppress(ProcessLookupError):  # its own session: make sure nothing is left
                os.killpg(info["pid"], signal.SIGKILL)
        pool.shutdown()


def crm_scores(state, lake: Path, day: date) -> dict:
    """Compare the day's scores in the lake with the sandbox HubSpot contacts."""
    import pandas as pd

    from pql.lake import Lake
    from sandbox.hubspot import HubSpotStore

    scores = pd.read_parquet(Lake(lake).scores(day) / "scores.parquet").dropna(subset=["email"])
    contacts = {
        r["properties"].get("email"): r["properties"]
        for r in HubSpotStore(state).list("contacts")
        if r["properties"].get("pql_score") not in (None, "")
    }
    mismatched = [
        e
        for e, s in zip(scores["email"], scores["score"], strict=True)
        if e not in contacts or contacts[e]["pql_score"] != str(s)
    ]
    return {
        "scored_users": len(scores),
        "contacts_with_score": len(contacts),
        "pqls_in_crm": sum(1 for p in contacts.values() if p.get("pql_flag") == "true"),
        "mismatched": mismatched,
    }


def run(
    workdir: Path,
    users: int = 200,
    days: int = 10,
    seed: int = 7,
    timeout: float = 300,
    say=print,
    hold=None,
) -> dict:
    """Sandbox + topology + the pipeline through the REST API; everything stopped at the end.

    Returns the health checks, the runs, the CRM comparison, timings and the process groups
    that were started (all gone by the time this returns). `hold(topology)` runs before the
    teardown (--keep-running).
    """
    t0 = time.monotonic()
    workdir = Path(workdir)
    result: dict = {}
    with (
        sandbox(workdir / "sandbox", seed, users, days) as (state, connections, started),
        LocalTopology(workdir, workdir / "lake", connections, say=say) as topo,
    ):
        try:
            info = started.result()
        except RuntimeError as exc:
            raise TopologyError(f"the sandbox did not start: {exc}") from exc
        result["pgids"] = sorted(topo.pgids() | {info["pid"]})
        result["startup_s"] = round(time.monotonic() - t0, 1)
        # The compose health checks run while the pipeline does (each starts a Python process).
        with ThreadPoolExecutor(1) as pool:
            checks = pool.submit(topo.healthchecks)
            result["run"] = run_pipeline(topo, timeout=timeout, say=say)
            result["healthchecks"] = checks.result()
        for name, outcome in result["healthchecks"].items():
            say(f"compose health check of {name}: {outcome}")
        day = date.fromisoformat(result["run"]["day"])
        result["crm"] = crm_scores(state, workdir / "lake", day)
        result["timings"] = {k: round(v, 1) for k, v in topo.timings.items()}
        crm = result["crm"]
        say(
            f"day {result['run']['day']}: {crm['scored_users']} users scored, "
            f"{crm['contacts_with_score']} HubSpot contacts hold a pql_score "
            f"({crm['pqls_in_crm']} PQLs)"
        )
        if hold:
            hold(topo)
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


# --- command line -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run docker-compose.yaml's topology without Docker and the pipeline on it."
    )
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=300, help="for the DAG runs, seconds")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "topology")
    parser.add_argument(
        "--keep-running", action="store_true", help="leave it up (UI, REST API) until Ctrl-C"
    )
    args = parser.parse_args()

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:5.0f}s] {text}", flush=True)

    def hold(topo: LocalTopology) -> None:
        say(
            f"Airflow UI and REST API: {topo.api_url} (user admin, password "
            f"{topo.admin_password}); component logs in {topo.logs}. Ctrl-C stops everything."
        )
        while True:
            time.sleep(3600)

    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        result = run(
            work,
            args.users,
            args.days,
            args.seed,
            args.timeout,
            say=say,
            hold=hold if args.keep_running else None,
        )
    except KeyboardInterrupt:
        say("stopped")
        return 0
    except TopologyError as exc:
        say(f"error: {exc}")
        return 1
    failed = {k: v for k, v in result["healthchecks"].items() if v != "ok"}
    problems = []
    if failed:
        problems.append(f"compose health checks failed: {failed}")
    if result["crm"]["mismatched"] or not result["crm"]["contacts_with_score"]:
        problems.append(f"the CRM does not hold the day's scores: {result['crm']}")
    say(json.dumps({k: v for k, v in result.items() if k != "pgids"}, default=str))
    for p in problems:
        say(f"error: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    _paths = [str(ROOT / "include"), str(ROOT / "plugins")]
    sys.path[:0] = _paths
    os.environ["PYTHONPATH"] = os.pathsep.join(_paths + [os.environ.get("PYTHONPATH", "")])
    sys.exit(main())
