"""The weekly report in a real browser: Debian's headless Chromium opens the page as the report
view serves it and checks that it renders, that its charts are there, and that the numbers it
shows are the ones in its CSV files.

Needs the Debian packages chromium and chromium-driver: ./dev.sh test installs them when run as
root; otherwise this test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests import report_sample

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WEEK = str(report_sample.WEEK)
# Without the background-networking flags Chromium waits on services a closed network never answers.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def _missing() -> str | None:
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not absent:
        return None
    how = (
        "run ./dev.sh test as root (it installs them)"
        if os.geteuid() == 0
        else "not root, so ./dev.sh test could not install them: "
        "sudo apt-get install chromium chromium-driver"
    )
    return f"headless Chromium check skipped: {', '.join(absent)} missing ({how})"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The report view app on 127.0.0.1 (auth off) over a lake holding one written report."""
    import uvicorn
    from fastapi import FastAPI

    from pql_airflow.report_view import URL_PREFIX, create_app

    lake = tmp_path_factory.mktemp("lake")
    folder = report_sample.write(lake)
    app = FastAPI()
    app.mount(URL_PREFIX, create_app(lake, authorize=lambda: None))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the report view did not start"
    yield f"http://127.0.0.1:{port}{URL_PREFIX}/", folder
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


# One round trip: what the browser rendered, read from the live page.
READ_PAGE = """
const table = id => [...document.querySelectorAll(`#${id} tr`)].slice(1)
  .map(tr => [...tr.querySelectorAll('td')].map(td => td.innerText.trim()));
return {
  ready: document.readyState,
  title: document.title,
  h1: document.querySelector('h1').innerText,
  figures: [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg').getBoundingClientRect();
    return {id: f.id.replace('chart-', ''), width: svg.width, height: svg.height,
            bars: [...f.querySelectorAll('rect.bar')]
              .map(b => [+b.dataset.value, b.getBBox().height]),
            labels: [...f.querySelectorAll('rect.bar + text')].map(t => t.textContent)};
  }),
  totals: table('totals'), cohorts: table('cohorts'), health: table('health'),
  pqlWeight: getComputedStyle(document.querySelector('#totals tr.pql td')).fontWeight,
};
"""


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def test_the_report_renders_its_charts_and_the_numbers_of_its_csv_files(served, browser):
    url, folder = served
    browser.get(url)  # the list of weeks, then its link to the week: relative links work
    browser.find_element("css selector", "a.week").click()
    assert browser.current_url == f"{url}{WEEK}/"
    page = browser.execute_script(READ_PAGE)
    assert page["ready"] == "complete"
    assert page["title"] == f"PQL conversion, week of {WEEK}"
    assert page["h1"] == f"PQL conversion — week of {WEEK}"

    # Charts: one rendered SVG per chart CSV, its bars drawn from that CSV's numbers.
    kept = sorted(p.stem.removeprefix("chart_") for p in folder.glob("chart_*.csv"))
    assert sorted(f["id"] for f in page["figures"]) == kept
    for fig in page["figures"]:
        assert fig["width"] > 100 and fig["height"] > 100, fig["id"]  # laid out, visible
        data = pd.read_csv(folder / f"chart_{fig['id']}.csv")
        expected = [float(v) for col in data.columns[1:] for v in data[col] if pd.notna(v)]
        assert sorted(v for v, _ in fig["bars"]) == sorted(expected), fig["id"]
        assert all((h > 0) == (v > 0) for v, h in fig["bars"]), fig  # drawn to scale
    (funnel,) = [f for f in page["figures"] if f["id"] == "funnel"]
    assert funnel["labels"] == [str(v) for v in pd.read_csv(folder / "chart_funnel.csv")["users"]]

    # Tables: what the reader sees equals the CSV files.
    totals = pd.read_csv(folder / "totals.csv")
    assert page["totals"] == [
        [r.group, str(r.users), str(r.meetings), _pct(r.meeting_rate), str(r.won), _pct(r.won_rate)]
        for r in totals.itertuples()
    ]
    cohorts = pd.read_csv(folder / "cohorts.csv")
    assert [(c[0], c[1], int(c[2]), c[6]) for c in page["cohorts"]] == [
        (str(r.cohort_week), r.group, r.users, _pct(r.won_rate)) for r in cohorts.itertuples()
    ]
    health = pd.read_csv(folder / "health.csv")
    assert [(c[0], c[3]) for c in page["health"]] == list(
        zip(health["check"], health["status"], strict=True)
    )
    # Styles applied (the page's inline CSS is allowed by its Content-Security-Policy).
    assert page["pqlWeight"] == "600"
