"""docker-compose.yaml, the Dockerfile and .env.example agree with each other and with the locked
requirements (Docker does not run on build machines: this is what can be checked statically;
tests/deploy/test_local_topology.py runs the same topology as local processes).

requirements.in / requirements-dev.in name the direct dependencies; requirements.txt (production,
what the image installs) and requirements-dev.txt (the same plus the dev tools, what ./dev.sh
installs) are the locks `./dev.sh lock` makes from them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"}


DEV_TOOLS = {"pytest", "hypothesis", "selenium", "aiosmtpd", "ruff", "mixpanel-utils"}
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)$")


def _requirements(name: str) -> list[str]:
    """The requirement lines of a requirements file: comments dropped, continuations joined."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    return [x.split("#")[0].strip() for x in text.splitlines() if x.split("#")[0].strip()]


def _pins(name: str = "requirements.txt") -> dict[str, str]:
    """Normalised package name -> pinned version. Option lines (-c, -r) are skipped, and so are
    unpinned names in an .in file (requirements-dev.in takes their versions from the lock)."""
    pins = {}
    for line in _requirements(name):
        if line.startswith("-") or (name.endswith(".in") and "==" not in line):
            continue
        pin = _PIN.match(line.split(" --hash=")[0].strip())
        assert pin, f"{name}: not pinned with ==: {line}"
        key, version = re.sub(r"[-_.]+", "-", pin.group(1)).lower(), pin.group(3)
        assert pins.get(key, version) == version, f"{name}: two versions of {key}"
        pins[key] = version
    return pins


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def _airflow_services() -> dict[str, dict]:
    return {n: s for n, s in _compose()["services"].items() if n.startswith("airflow")}


def test_every_requirement_is_locked_with_hashes():
    for lock in ("requirements.txt", "requirements-dev.txt"):
        lines = _requirements(lock)
        assert lines and _pins(lock), lock
        for line in lines:
            assert not line.startswith("-") and " --hash=sha256:" in line, f"{lock}: {line}"
        # pip before 23.3, in hash-checking mode, needs name==v beside each name[extra]==v.
        pins = {x.split(" ")[0] for x in lines}
        for pin in pins:
            assert re.sub(r"\[.*\]", "", pin) in pins, f"{lock}: {pin} without its bare pin"
        header = (ROOT / lock).read_text().split("\n", 8)[:8]
        assert any("`./dev.sh lock`" in x for x in header), f"{lock}: say how to regenerate it"


def test_locks_hold_the_direct_pins_and_agree():
    production, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
    direct = _pins("requirements.in")
    assert all("==" in x for x in _requirements("requirements.in")), "pin every direct dependency"
    assert {k: production.get(k) for k in direct} == direct
    assert {k: dev.get(k) for k in _pins("requirements-dev.in")} == _pins("requirements-dev.in")
    # The dev lock is the production lock plus the dev tools, at the same versions.
    assert {k: dev.get(k) for k in production} == production
    assert set(dev) >= DEV_TOOLS and not DEV_TOOLS & set(production)
    dev_in = _requirements("requirements-dev.in")
    assert "-c requirements.txt" in dev_in and "-r requirements.in" in dev_in


def test_celery_executor_stack_is_pinned():
    pins = _pins()
    for name in (
        "apache-airflow-providers-celery",
        "celery",
        "kombu",
        "redis",
        "psycopg2-binary",
        "asyncpg",
    ):
        assert name in pins, name
    # celery 5.7 removed celery.backends.database.retry, which the provider imports.
    assert pins["celery"].startswith("5.6.")


def test_image_matches_pinned_airflow():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"FROM apache/airflow:(\S+)-python3\.11", dockerfile)
    assert base and base.group(1) == _pins()["apache-airflow"]
    # The production lock only: the dev tools never reach the image.
    assert re.findall(r"-r (\S+)", dockerfile) == ["/opt/pql/requirements.txt"]
    # Mount points of named volumes exist in the image, owned by airflow, so they start writable.
    for path in ("/data/lake", "/opt/airflow/auth"):
        assert path in dockerfile and "chown airflow:root" in dockerfile


def test_compose_runs_every_airflow_3_component_with_the_celery_executor():
    services = _airflow_services()
    commands = {s["command"] for s in services.values() if isinstance(s.get("command"), str)}
    assert commands == COMPONENTS
    for name, svc in services.items():
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/pql/dags"
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/pql/plugins"
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
        # Workers reach the api-server's execution API by its service name and port.
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        )
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"]
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed.
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert env["PQL_LAKE"] == "/data/lake" and env["PQL_CONFIG"].startswith("/opt/pql/config/")
        assert svc["env_file"] == ".env"
        assert svc["user"] == "50000:0"
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    for name in ("airflow-apiserver", "airflow-worker", "airflow-scheduler"):
        assert "lake:/data/lake" in services[name]["volumes"]


def test_compose_orders_startup_and_checks_health():
    compose = _compose()
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    for name, svc in services.items():
        if name != "airflow-init":
            assert "healthcheck" in svc, f"{name} has no health check"
    for name, svc in _airflow_services().items():
        deps = svc["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        if name != "airflow-init":
            assert deps["redis"]["condition"] == "service_healthy", name
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    worker = services["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    # Scalable with --scale: no fixed container name, no host port.
    assert "container_name" not in worker and "ports" not in worker
    assert "celery_executor.app inspect ping" in worker["healthcheck"]["test"][1]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"]
    assert set(compose["volumes"]) >= {"postgres-db", "lake", "logs", "auth"}


def test_init_service_migrates_imports_pools_and_sets_the_admin_password():
    init = _compose()["services"]["airflow-init"]
    assert init["command"] == ["bash", "/opt/pql/deploy/airflow-init.sh"]
    assert init["restart"] == "no"
    assert "auth:/opt/airflow/auth" in init["volumes"]
    assert "auth:/opt/airflow/auth" in _compose()["services"]["airflow-apiserver"]["volumes"]
    script = (ROOT / "deploy" / "airflow-init.sh").read_text()
    steps = [line.strip() for line in script.splitlines()]
    assert "airflow db migrate" in steps
    assert 'airflow pools import "$root/config/airflow_pools.json"' in steps
    assert (ROOT / "config" / "airflow_pools.json").exists()
    assert "AIRFLOW_ADMIN_PASSWORD" in script
    assert steps.index("airflow db migrate") < steps.index(
        'airflow pools import "$root/config/airflow_pools.json"'
    )


def test_env_example_defines_every_variable_compose_uses_and_no_secret():
    text = (ROOT / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, flags=re.M))
    assert used <= defined, used - defined
    for var in (
        "AIRFLOW_CONN_MIXPANEL_DEFAULT",
        "AIRFLOW_CONN_HUBSPOT_DEFAULT",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "REDIS_PASSWORD",
        "POSTGRES_PASSWORD",
    ):
        assert var in defined, var
    assert "pat-" not in example  # placeholders only, never a real-looking token
    # .env holds the secrets: never in git, never in the image.
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_local_topology_swaps_only_container_hosts_paths_and_secrets():
    """deploy/topology.py runs the compose environment verbatim except for LOCAL_KEYS, and those
    are exactly the settings that name a container path, a compose service or a .env value."""
    from deploy import topology

    env = topology.compose_environment()
    markers = ("/opt/", "/data/", "${", "airflow-apiserver", "@postgres/", "@redis:")
    container_specific = {k for k, v in env.items() if any(m in v for m in markers)}
    assert container_specific <= topology.LOCAL_KEYS
    assert set(env) >= topology.LOCAL_KEYS
    assert set(topology.compose_components()) == {
        n for n, s in _airflow_services().items() if n != "airflow-init"
    }
