"""One HTTP server on 127.0.0.1 that serves every vendor emulator, plus start/stop/status."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests
import uvicorn
from fastapi import FastAPI, Request

from sandbox import amplitude, enrichment, hubspot, mixpanel, salesforce, slack
from sandbox.state import SandboxState, write_json_private

HOST = "127.0.0.1"


def connection_env(state: SandboxState, base_url: str) -> dict[str, str]:
    """AIRFLOW_CONN_* variables pointing the pipeline's connections at this sandbox."""

    mp, hs = state.credentials["mixpanel"], state.credentials["hubspot"]
    return {
        **amplitude.connection_env(state, base_url),
        **enrichment.connection_env(state, base_url),
        **salesforce.connection_env(state, base_url),
        "AIRFLOW_CONN_MIXPANEL_DEFAULT": json.dumps(
            {
                "conn_type": "http",
                "host": base_url,
                "login": mp["username"],
                "password": mp["secret"],
            }
        ),
        "AIRFLOW_CONN_HUBSPOT_DEFAULT": json.dumps(
            {"conn_type": "http", "host": base_url, "password": hs["access_token"]}
        ),
        # The webhook URL holds its secret: it goes in the password, like a real one should.
        "AIRFLOW_CONN_SLACK_PQL": json.dumps(
            {"conn_type": "http", "password": base_url + slack.webhook_path(state)}
        ),
    }


def create_app(state: SandboxState) -> FastAPI:
    """The sandbox application: vendor routers plus a small control API under /_sandbox."""
    app = FastAPI(title="PQL sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = state
    app.include_router(mixpanel.router(state))
    app.include_router(hubspot.router(state))
    app.include_router(amplitude.router(state))
    app.include_router(enrichment.router(state))
    app.include_router(salesforce.router(state))
    app.include_router(slack.router(state))

    @app.get("/_sandbox/health")
    def health():
        return {"status": "ok", "root": str(state.root)}

    @app.post("/_sandbox/faults")
    async def faults(request: Request):
        body = await request.json()
        state.queue_fault(body["target"], int(body["status"]), int(body.get("count", 1)))
        return {"queued": body}

    @app.get("/_sandbox/counters")
    def counters():
        return dict(state.counters)

    @app.post("/_sandbox/settings")
    async def settings(request: Request):
        state.settings.update(await request.json())
        return state.settings

    return app


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    return sock


def _server(app: FastAPI, **options) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, **options)
    return uvicorn.Server(config)


def _tls_server(
    app: FastAPI, state: SandboxState, port: int
) -> tuple[uvicorn.Server, socket.socket]:
    """The same app over TLS (simple-salesforce only speaks https); sets state.salesforce_url."""
    files = salesforce.tls_files(state)
    sock = _bind(port)
    server = _server(app, ssl_certfile=str(files["cert"]), ssl_keyfile=str(files["key"]))
    salesforce.publish_instance_url(state, f"https://{HOST}:{sock.getsockname()[1]}")
    return server, sock


@contextmanager
def running(root: Path, settings: dict | None = None):
    """Run the sandbox in a thread of this process on a free port; yields the SandboxState.

    The base URL is `state.base_url`. Used by tests, which need no separate process.
    """
    state = SandboxState.open(root)
    if settings:
        state.settings.update(settings)
    app = create_app(state)
    servers = [(_server(app), _bind(0)), _tls_server(app, state, 0)]
    threads = [
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        for server, sock in servers
    ]
    for thread in threads:
        thread.start()
    state.base_url = f"http://{HOST}:{servers[0][1].getsockname()[1]}"
    _wait_healthy(state.base_url, timeout=15)
    deadline = time.monotonic() + 15
    while not servers[1][0].started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield state
    finally:
        for server, _ in servers:
            server.should_exit = True
        # Idle TLS keep-alive connections would hold shutdown until the client's close_notify.
        servers[1][0].force_exit = True
        for thread in threads:
            thread.join(timeout=10)
        for _, sock in servers:
            sock.close()


def _wait_healthy(base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{base_url}/_sandbox/health", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox at {base_url} did not become healthy in {timeout:.0f}s")
        time.sleep(0.1)


def _pidfile(root: Path) -> Path:
    return Path(root) / "server.json"


def status(root: Path) -> dict | None:
    """The running sandbox's pid and URL, or None when it is not running."""
    info_path = _pidfile(root)
    if not info_path.exists():
        return None
    info = json.loads(info_path.read_text())
    try:
        os.kill(info["pid"], 0)
        requests.get(f"{info['base_url']}/_sandbox/health", timeout=2).raise_for_status()
    except (OSError, requests.RequestException):
        return None
    return info


def start(root: Path, port: int = 0) -> dict:
    """Start the sandbox as a background process (idempotent); returns its pid and URL."""
    root = Path(root).resolve()
    SandboxState.open(root)
    info = status(root)
    if info:
        return info
    if port == 0:
        with _bind(0) as s:
            port = s.getsockname()[1]
    with _bind(0) as s:
        tls_port = s.getsockname()[1]
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.server", "--root", str(root), "--port", str(port)]
            + ["--tls-port", str(tls_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = {"pid": proc.pid, "base_url": f"http://{HOST}:{port}", "root": str(root)}
    info["salesforce_url"] = f"https://{HOST}:{tls_port}"
    try:
        _wait_healthy(info["base_url"], timeout=30)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"sandbox failed to start; see {root / 'server.log'}") from None
    write_json_private(_pidfile(root), info)
    return info


def stop(root: Path) -> bool:
    """Stop the background sandbox; True if one was running."""
    info = status(root)
    _pidfile(root).unlink(missing_ok=True)
    if not info:
        return False
    os.kill(info["pid"], signal.SIGTERM)
    for _ in range(50):
        if not _alive(info["pid"]):
            return True
        time.sleep(0.1)
    os.kill(info["pid"], signal.SIGKILL)
    _alive(info["pid"])
    return True


def _alive(pid: int) -> bool:
    """Whether the process still runs; reaps it when it is this process's child (a started
    sandbox that exited stays a zombie, which signal 0 still reaches, until reaped)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: its parent reaps it
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the PQL sandbox server in the foreground.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=0, help="HTTPS port (Salesforce clients)")
    args = parser.parse_args()
    state = SandboxState.open(args.root)
    app = create_app(state)
    tls, tls_sock = _tls_server(app, state, args.tls_port)
    threading.Thread(target=tls.run, kwargs={"sockets": [tls_sock]}, daemon=True).start()
    _server(app).run(sockets=[_bind(args.port)])


if __name__ == "__main__":
    main()
