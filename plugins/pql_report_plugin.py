"""Airflow 3 plugin: the weekly PQL reports from the lake, in the Airflow UI.

The api-server mounts the reports app (plugins/pql_airflow/report_view.py) at /pql-reports, and
the UI gets a "PQL reports" entry under Browse that shows it in a frame. Airflow loads this
file from the plugins folder; restart the api-server after changing it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pql_airflow.report_view import URL_PREFIX, LazyApp


class PqlReportsPlugin(AirflowPlugin):
    name = "pql_reports"
    fastapi_apps = [
        {"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "PQL weekly reports"},
    ]
    external_views = [
        {
            "name": "PQL reports",
            # Relative to the UI's base URL (no leading slash), so a base_url with a path works.
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "pql-reports",  # shown inside the UI at /plugin/pql-reports
            "destination": "nav",
            "category": "browse",
        }
    ]
