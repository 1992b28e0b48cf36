"""The weekly report in a real browser: Debian's headless Chromium opens the page as the report
view serves it and checks that it renders, that its charts are there, and that the numbers it
shows are the ones in its CSV files.

Needs the Debian packages chromium and chromium-driver: ./dev.sh test installs them when run as
root; otherwise this test is skipped and says why.
"""

from __future__ import annotations

import json
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
  summary: [...document.querySelectorAll('#summary li')].map(li => li.innerText.trim()),
  figures: [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg').getBoundingClientRect();
    return {id: f.id.replace('chart-', ''), width: svg.width, height: svg.height,
            words: [...f.querySelectorAll('svg text')].map(t => t.textContent.trim())};
  }),
  totals: table('totals'), cohorts: table('cohorts'), health: table('health'),
  text: document.body.innerText,
  pqlWeight: getComputedStyle(document.querySelector('#totals tr.pql td')).fontWeight,
};
"""


def _rate(k: int, n: int, note: str) -> str:
    return f"{100 * k / n:.1f}% ({k:,}/{n:,})" if n else note


def _row(r) -> list[str]:
    """A breakdown row as the page must show it, from the CSV."""
    note = r.note if isinstance(r.note, str) and r.note else "too early"

    def ci(lo, hi):
        return f"{100 * lo:.1f}%–{100 * hi:.1f}%" if r.mature_users else ""

    return [str(r.value), r.group, f"{r.users:,}", f"{r.mature_users:,}", f"{r.still_open:,}",
            _rate(r.meetings, r.mature_users, note), ci(r.meeting_low, r.meeting_high),
            _rate(r.won, r.mature_users, note), ci(r.won_low, r.won_high),
            f"{r.won_revenue:,.0f}"]  # fmt: skip


def test_the_report_renders_its_charts_and_the_numbers_of_its_csv_files(served, browser):
    url, folder = served
    browser.get(url)  # the list of weeks, then its link to the week: relative links work
    browser.find_element("css selector", "a.week").click()
    assert browser.current_url == f"{url}{WEEK}/"
    page = browser.execute_script(READ_PAGE)
    assert page["ready"] == "complete"
    assert page["title"] == f"PQL conversion, week of {WEEK}"
    assert page["h1"] == f"PQL conversion — week of {WEEK}"
    summary = json.loads((folder / "summary.json").read_text())
    assert page["summary"] == summary["lines"]  # the CEO's ten seconds, as the e-mail says

    # Charts: one rendered SVG per chart CSV, drawn from that CSV, axes labelled.
    kept = sorted(p.stem.removeprefix("chart_") for p in folder.glob("chart_*.csv"))
    assert sorted(f["id"] for f in page["figures"]) == kept
    figures = {f["id"]: f for f in page["figures"]}
    for fig in page["figures"]:
        assert fig["width"] > 100 and fig["height"] > 100, fig["id"]  # laid out, visible
    cohort = figures["won_by_cohort"]
    weeks = pd.read_csv(folder / "chart_won_by_cohort.csv")["cohort_week"].unique()
    assert set(weeks) <= set(cohort["words"])
    assert "won rate, % of mature users" in cohort["words"] and "too early" in cohort["words"]
    band = pd.read_csv(folder / "chart_won_by_band.csv")
    ticks = " ".join(figures["won_by_band"]["words"])
    for r in band.itertuples():
        assert (f"{r.won}/{r.users}" if r.users else "no users") in ticks

    # Tables: what the reader sees equals the CSV files.
    totals = pd.read_csv(folder / "totals.csv", keep_default_na=False, na_values=[""])
    assert [row[:10] for row in page["totals"]] == [_row(r) for r in totals.itertuples()]
    cohorts = pd.read_csv(folder / "cohorts.csv", keep_default_na=False, na_values=[""])
    assert [row[:10] for row in page["cohorts"]] == [_row(r) for r in cohorts.itertuples()]
    assert any(r.mature_users == 0 for r in cohorts.itertuples())  # a too-early cohort shown
    health = pd.read_csv(folder / "health.csv")
    assert [(c[0], c[1], c[3]) for c in page["health"]] == list(
        zip(health["check"], health["text"], health["status"], strict=True)
    )
    # No placeholder leaks to the reader.
    for word in ("None", "nan", "NaN", "undefined", "null"):
        assert f" {word} " not in f" {page['text']} ".replace("\n", " "), word
    # Styles applied (the page's inline CSS is allowed by its Content-Security-Policy).
    assert page["pqlWeight"] == "600"
