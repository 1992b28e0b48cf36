"""The weekly reports inside the Airflow UI: a FastAPI app the api-server mounts at /pql-reports.

    GET /pql-reports/                   the weeks, newest first, headline numbers, CSV links
    GET /pql-reports/YYYY-MM-DD/        that week's report page (reports/week=YYYY-MM-DD/index.html)
    GET /pql-reports/YYYY-MM-DD/x.csv   one of its CSV files
    GET /pql-reports/api/weeks          the same list as JSON

The lake is the project's (pql.config.load(), so $PQL_CONFIG and $PQL_LAKE apply). Only the files
the report writer makes are served (index.html and *.csv directly inside a week's folder), chosen
from a listing of that folder, never by joining a path taken from the URL, and checked to resolve
inside reports/: nothing else in the lake, or outside it, can be reached.

Callers must be Airflow users allowed to read runs of the weekly DAG (the UI's session cookie
or a bearer token from /auth/token): plugin endpoints are not protected by Airflow on their own.
Registered by plugins/pql_report_plugin.py; Airflow's API modules are imported on the first
request only, so the scheduler and workers that load plugins do not pay for them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import date
from functools import cache
from pathlib import Path

URL_PREFIX = "/pql-reports"
REPORT_DAG = "pql_weekly_outcomes"
_WEEK = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The page only needs its own inline styles and SVG: no scripts, no requests elsewhere.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)


def airflow_access():
    """A FastAPI dependency: the caller may read runs of the weekly DAG in Airflow."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, HTTPException

    def check(user=Depends(get_user)) -> None:  # noqa: B008 (FastAPI's idiom)
        allowed = get_auth_manager().is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=REPORT_DAG),
            user=user,
        )
        if not allowed:
            raise HTTPException(403, f"Forbidden: reading runs of {REPORT_DAG} is needed")

    return check


def report_dirs(root: Path) -> dict[str, Path]:
    """Week (YYYY-MM-DD) → its report folder, for every well-formed week folder in the lake."""
    base = root / "reports"
    out = {}
    for p in base.glob("week=*") if base.is_dir() else []:
        week = p.name.removeprefix("week=")
        if _WEEK.match(week) and p.is_dir() and _inside(p, base):
            try:
                date.fromisoformat(week)
            except ValueError:
                continue
            out[week] = p
    return dict(sorted(out.items(), reverse=True))


def served_files(folder: Path) -> dict[str, Path]:
    """The files of one report that may be served: its page and its CSV files."""
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and (p.name == "index.html" or p.suffix == ".csv")
        and not p.name.startswith(".")
        and _inside(p, folder)
    }


def _inside(path: Path, parent: Path) -> bool:
    """Whether `path` resolves (symlinks followed) to somewhere inside `parent`."""
    return path.resolve().is_relative_to(parent.resolve())


def _summary(folder: Path, week: str) -> dict:
    from pql.report import delivery

    try:
        h = delivery.headline(folder, date.fromisoformat(week))
    except (FileNotFoundError, KeyError, ValueError):
        return {}

    def short(key: str) -> str:
        r = h.rates.get(key, {})
        return f"{100 * r['rate']:.1f}% ({r['k']:,}/{r['n']:,})" if r.get("n") else "too early"

    return {
        "pqls": h.pqls,
        "users": h.users,
        "pql_meeting": short("pql_meeting"),
        "pql_won": short("pql_won"),
        "failing_checks": list(h.failing),
    }


def _list_page(weeks: list[dict]) -> str:
    rows = []
    for w in weeks:
        wk = html.escape(w["week"])
        csvs = " ".join(
            f'<a href="{wk}/{html.escape(f)}">{html.escape(f)}</a>'
            for f in w["files"]
            if f.endswith(".csv")
        )
        s = w["summary"]
        failing = len(s.get("failing_checks", []))
        rows.append(
            f'<tr><td><a class="week" href="{wk}/">week of {wk}</a></td>'
            f"<td>{s.get('pqls', '')}</td><td>{html.escape(s.get('pql_meeting', ''))}</td>"
            f"<td>{html.escape(s.get('pql_won', ''))}</td>"
            f'<td class="{"fail" if failing else ""}">{failing or ""}</td><td>{csvs}</td></tr>'
        )
    body = (
        '<table id="weeks"><tr><th>report</th><th>PQLs</th><th>PQL→meeting</th><th>PQL→won</th>'
        "<th>failing checks</th><th>CSV files</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No weekly report yet: the pql_weekly_outcomes DAG writes one each week.</p>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>PQL weekly reports'
        "</title><style>body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}"
        "table{border-collapse:collapse}th,td{padding:.3rem .7rem;border-bottom:1px solid #ddd;"
        "text-align:left}.fail{color:#b00020;font-weight:600}td a{margin-right:.5rem}</style>"
        f"</head><body><h1>PQL weekly reports</h1>{body}</body></html>"
    )


def create_app(lake_root: Path | None = None, authorize: Callable | None = None):
    """The reports app. `lake_root` defaults to the project config's lake (read on first use);
    `authorize` is a FastAPI dependency run before every route (default: Airflow's auth)."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    @cache
    def root() -> Path:
        if lake_root is not None:
            return Path(lake_root)
        from pql.config import load

        return load().lake.root

    app = FastAPI(
        title="PQL weekly reports",
        dependencies=[Depends(authorize or airflow_access())],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    nosniff = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

    def weeks() -> list[dict]:
        return [
            {"week": w, "files": sorted(served_files(p)), "summary": _summary(p, w)}
            for w, p in report_dirs(root()).items()
        ]

    def week_folder(week: str) -> Path:
        folder = report_dirs(root()).get(week)
        if folder is None:
            raise HTTPException(404, f"no report for the week of {week}")
        return folder

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        headers = {**nosniff, "Content-Security-Policy": PAGE_CSP}
        return HTMLResponse(_list_page(weeks()), headers=headers)

    @app.get("/api/weeks")
    def api_weeks() -> list[dict]:
        return weeks()

    @app.get("/{week}/")
    def page(week: str) -> FileResponse:
        found = served_files(week_folder(week)).get("index.html")
        if found is None:
            raise HTTPException(404, f"the report for the week of {week} has no page")
        headers = {**nosniff, "Content-Security-Policy": PAGE_CSP}
        return FileResponse(found, media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/{week}/{name}")
    def file(week: str, name: str) -> FileResponse:
        found = served_files(week_folder(week)).get(name)
        if found is None or not name.endswith(".csv"):
            raise HTTPException(404, f"no file {name!r} in the report for the week of {week}")
        return FileResponse(
            found,
            media_type="text/csv; charset=utf-8",
            headers=nosniff,
            filename=f"pql-{week}-{name}",
            content_disposition_type="inline",
        )

    return app


class LazyApp:
    """An ASGI app built on its first request, so that loading the plugin stays cheap."""

    def __init__(self, factory: Callable = create_app):
        self._factory = factory
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)
