"""The report view plugin: loaded by Airflow's plugin manager, behind Airflow's auth, serving the
reports report.write put in the lake, and nothing else."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pql_airflow.report_view import URL_PREFIX, create_app
from tests import report_sample

WEEK = str(report_sample.WEEK)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    report_sample.write(root)
    (root / "scores" / "date=2026-11-20").mkdir(parents=True)
    (root / "scores" / "date=2026-11-20" / "scores.csv").write_text("email\nsecret@acme.io\n")
    return root


@pytest.fixture
def client(lake):
    app = FastAPI()
    app.mount(URL_PREFIX, create_app(lake, authorize=lambda: None))
    return TestClient(app)


def test_plugin_loads_and_serves_reports_behind_airflow_auth(lake, airflow_db):
    from airflow import plugins_manager
    from airflow.api_fastapi.app import get_auth_manager, init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    saved = os.environ.get("PQL_LAKE")
    os.environ["PQL_LAKE"] = str(lake)  # the plugin reads the lake from the project config
    try:
        assert plugins_manager.get_import_errors() == {}
        (info,) = [p for p in plugins_manager.get_plugin_info() if p["name"] == "pql_reports"]
        (view,) = info["external_views"]
        assert view["href"] == "pql-reports/" and view["url_route"] == "pql-reports"
        assert view["destination"] == "nav"
        (sub,) = [
            a for a in plugins_manager.get_fastapi_plugins()[0] if a["url_prefix"] == "/pql-reports"
        ]
        # Mounted the way the api-server mounts plugin apps (airflow.api_fastapi.app.init_plugins).
        api = FastAPI()
        api.mount(sub["url_prefix"], sub["app"])
        init_auth_manager()
        client = TestClient(api)
        assert client.get("/pql-reports/").status_code == 401  # no session, no token
        bad = client.get("/pql-reports/", headers={"Authorization": "Bearer not-a-jwt"})
        assert bad.status_code in (401, 403)
        token = get_auth_manager().generate_jwt(
            SimpleAuthManagerUser(username="ann", role="viewer")
        )
        listing = client.get("/pql-reports/", headers={"Authorization": f"Bearer {token}"})
        assert listing.status_code == 200 and f'href="{WEEK}/"' in listing.text
        client.cookies.set("_token", token)  # the UI's session cookie, as inside its iframe
        page = client.get(f"/pql-reports/{WEEK}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert f"week of {WEEK}" in page.text and 'id="chart-won_by_cohort"' in page.text
        assert page.text == (lake / "reports" / f"week={WEEK}" / "index.html").read_text()
    finally:
        os.environ.pop("PQL_LAKE")
        if saved is not None:
            os.environ["PQL_LAKE"] = saved


def test_list_pages_and_csv_files(client, lake):
    weeks = client.get("/pql-reports/api/weeks").json()
    assert [w["week"] for w in weeks] == [WEEK]
    assert "index.html" in weeks[0]["files"] and "totals.csv" in weeks[0]["files"]
    assert weeks[0]["summary"]["pqls"] == 12 and weeks[0]["summary"]["pql_won"] == "25.0% (3/12)"
    listing = client.get("/pql-reports/")
    assert "33.3%" in listing.text and "25.0%" in listing.text  # PQL→meeting, PQL→won
    assert f'href="{WEEK}/totals.csv"' in listing.text
    page = client.get(f"/pql-reports/{WEEK}/")
    assert "script-src" not in page.headers["content-security-policy"]  # no scripts at all
    assert client.get(f"/pql-reports/{WEEK}").status_code == 200  # redirected to the folder
    csv = client.get(f"/pql-reports/{WEEK}/totals.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    served = pd.read_csv(pd.io.common.StringIO(csv.text)).set_index("group")
    assert served.loc["PQL", "users"] == 12


@pytest.mark.parametrize(
    "path",
    [
        f"/pql-reports/{WEEK}/..%2F..%2Fscores%2Fdate=2026-11-20%2Fscores.csv",
        f"/pql-reports/{WEEK}/%2e%2e%2f%2e%2e%2fscores",
        "/pql-reports/..%2Fscores/scores.csv",
        "/pql-reports/2026-11-20/scores.csv",  # a week with no report (a scores date)
        f"/pql-reports/{WEEK}/index.html%00.csv",
        f"/pql-reports/{WEEK}/.hidden.csv",
        f"/pql-reports/{WEEK}/index.html",  # the page is served at the folder, files are CSV
        "/pql-reports/2026-13-45/",
        "/pql-reports/week=2026-11-16/",
    ],
)
def test_nothing_outside_the_reports_is_served(client, lake, path):
    (lake / "reports" / f"week={WEEK}" / ".hidden.csv").write_text("x\n1\n")
    got = client.get(path)
    assert got.status_code == 404, got.text
    assert "secret@acme.io" not in got.text


def test_links_out_of_the_lake_are_not_followed(tmp_path):
    root = tmp_path / "lake"
    folder = report_sample.write(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("secret\n42\n")
    (folder / "leak.csv").symlink_to(outside / "secret.csv")
    (root / "reports" / "week=2026-11-09").symlink_to(outside)
    app = FastAPI()
    app.mount(URL_PREFIX, create_app(root, authorize=lambda: None))
    client = TestClient(app)
    assert [w["week"] for w in client.get("/pql-reports/api/weeks").json()] == [WEEK]
    assert client.get(f"/pql-reports/{WEEK}/leak.csv").status_code == 404
    assert client.get("/pql-reports/2026-11-09/secret.csv").status_code == 404


def test_an_empty_lake_says_so(tmp_path):
    app = FastAPI()
    app.mount(URL_PREFIX, create_app(tmp_path, authorize=lambda: None))
    got = TestClient(app).get("/pql-reports/")
    assert got.status_code == 200 and "No weekly report yet" in got.text
