"""Markers of the deployment tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "topology: starts docker-compose.yaml's topology as local processes (PostgreSQL, Redis, "
        "Airflow's components with the CeleryExecutor); about 3 minutes",
    )
