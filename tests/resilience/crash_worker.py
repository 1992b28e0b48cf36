"""A process that runs `pql sync` in forked children, for the crash tests to SIGKILL.

It imports the pipeline once, then reads one JSON command per line on stdin:

    {"day": "2026-10-03", "kill_on": ["os.rename", "open"], "kill_at": 2}

and forks a child that runs `pql sync --day <day>` (the CLI, with PQL_CONFIG, PQL_LAKE and the
AIRFLOW_CONN_* variables of this process). With `kill_on`, the child SIGKILLs itself at the
`kill_at`-th audit event of those names, just before it happens: "os.rename" (a rename into
place), "open" (counted only when it opens a file for writing), "shutil.rmtree" (the old
version removed after a swap), "http.client.send" (every piece of a request going out). The worker
prints {"pid": ...} as soon as the child exists (so the test can also kill it by time) and
then {"pid": ..., "exit": code, "signal": n} when it has ended. Children exit 0 on success,
1 on a clear error (the CLI's message on stderr).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

# Everything the sync needs, imported before any fork so that children start at once.
import hubspot.crm.contacts  # noqa: F401
import hubspot.crm.objects  # noqa: F401
import hubspot.crm.properties  # noqa: F401
import pandas  # noqa: F401
import pyarrow.parquet  # noqa: F401
import simple_salesforce  # noqa: F401

from pql import cli, pipeline  # noqa: F401
from pql.crm import hubspot, ledger, salesforce  # noqa: F401


def _child(day: str, kill_on: list[str] | None, kill_at: int) -> None:
    os.dup2(2, 1)  # the CLI's own output goes to stderr: stdout carries the worker's reports
    if kill_on:
        seen = [0]

        def hook(event, args):
            if event in kill_on and (event != "open" or _writes(args)):
                seen[0] += 1
                if seen[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(hook)
    try:
        cli.main(["sync", "--day", day], standalone_mode=True)
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)
    os._exit(0)


def _writes(args) -> bool:
    """Whether an "open" audit event opens a file for writing."""
    mode, flags = (args + (None, None))[1:3]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR))


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(cmd["day"], cmd.get("kill_on"), int(cmd.get("kill_at") or 0))
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        report = {
            "pid": pid,
            "seconds": round(time.monotonic() - began, 3),
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
