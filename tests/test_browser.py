"""The report and the MLflow UI as a user sees them: headless Chromium on the outputs of a tiny `dvc repro`.
Run with `python -m pytest -m browser` (needs Debian's chromium and chromium-driver); screenshots are saved."""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.support.ui import WebDriverWait

from conftest import free_port
from vaelab import tracking

pytestmark = pytest.mark.browser


def _full_page_screenshot(browser, path: Path) -> None:
    """Resize the window to the page's height (capped), then save a PNG."""
    width, height = browser.get_window_size()["width"], browser.get_window_size()["height"]
    full = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(int(full) + 100, 12000))
    try:
        assert browser.save_screenshot(str(path))
    finally:
        browser.set_window_size(width, height)


def test_report_html_shows_every_image_and_the_beta_table(reproduced_repo, browser, screenshots):
    page = reproduced_repo / "reports" / "report.html"
    md = (reproduced_repo / "reports" / "report.md").read_text()
    n_images = len(re.findall(r"!\[[^\]]*\]\([^)]+\.png\)", md))
    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
    assert len(images) == n_images >= 12
    for alt, width, height, src in images:
        assert width > 0 and height > 0, f"image {alt!r} did not load"
        assert src == "data:image/png;base64,", f"image {alt!r} is not embedded"
    # The beta table: the first table headed β names bits/dim and has one row per beta of the run.
    tables = browser.find_elements("css selector", "table")
    heads = [[th.text for th in t.find_elements("css selector", "thead th")] for t in tables]
    beta_table = next(t for t, h in zip(tables, heads) if h and h[0] == "β")
    header = heads[tables.index(beta_table)]
    assert any("bits/dim" in h for h in header), header
    first_cells = [td.text for td in beta_table.find_elements("css selector", "tbody tr td:first-child")]
    assert first_cells == ["1", "5"], first_cells
    # Each number carries its 95% interval.
    assert re.fullmatch(r"\d+\.\d{3} \[\d+\.\d{3}, \d+\.\d{3}\]",
                        beta_table.find_element("css selector", "tbody tr td:nth-child(2)").text)
    # The first table shows the samples: z ~ N(0, I) and the sampler's, per beta, side by side.
    assert heads[0] == ["β = 1: sampler", "β = 1: z ~ N(0, I)", "β = 5: sampler", "β = 5: z ~ N(0, I)"], heads[0]
    assert browser.find_element("tag name", "h1").text.startswith("β-VAE on CIFAR-10")
    _full_page_screenshot(browser, screenshots / "report_html.png")


@pytest.fixture
def mlflow_server(reproduced_repo, tmp_path):
    """`mlflow server` on a free loopback port against the tiny run's store; stopped by its PID afterwards."""
    port = free_port()
    log = open(tmp_path / "mlflow_server.log", "w")
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{reproduced_repo / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=reproduced_repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "mlflow_server.log").read_text()[-3000:]
            assert time.time() < deadline, "mlflow server did not answer /health within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own group: its workers stop with it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=2)


def _body_text(browser) -> str:
    return browser.find_element("tag name", "body").text


def _metric_shown(text: str, key: str) -> float:
    """The value printed after a metric's name in the run page's metrics table."""
    lines = text.splitlines()
    return float(lines[lines.index(key) + 1])


def test_mlflow_ui_lists_the_beta_runs_with_their_metrics(reproduced_repo, mlflow_server, browser, screenshots):
    uri = f"sqlite:///{reproduced_repo / 'mlflow.db'}"
    every = tracking.find_runs(uri, "cifar10-beta-vae")
    # The β sweep's and the control study's runs share the experiment, nested under their parent runs.
    top = [r for r in every if "mlflow.parentRunId" not in r["tags"]]
    runs = {r["name"]: r for r in top if "vaelab_group" not in r["tags"]}
    assert set(runs) == {"beta=1", "beta=5"}
    experiment = runs["beta=1"]["experiment_id"]

    # The experiment's runs table, in the UI's "Model training" view.
    browser.get(f"{mlflow_server}/#/experiments/{experiment}/runs")
    WebDriverWait(browser, 60).until(lambda b: "beta=1" in _body_text(b) and "beta=5" in _body_text(b))
    toggle = browser.find_elements("xpath", "//*[normalize-space(text())='Model training']")
    if toggle:  # MLflow 3 opens in its GenAI view; the runs table is the same either way
        toggle[0].click()
    WebDriverWait(browser, 30).until(lambda b: "cifar10-vae" in _body_text(b))  # the registered versions
    text = _body_text(browser)
    # The table counts the top-level runs (children fold under their parents) or every run, by UI version.
    shown = re.search(r"(\d+) matching runs", text)
    assert shown and int(shown.group(1)) in (len(top), len(every)), text[:500]
    assert browser.save_screenshot(str(screenshots / "mlflow_runs.png"))

    # Each beta's run page: its description and the values of its metrics as logged.
    for name, run in runs.items():
        browser.get(f"{mlflow_server}/#/experiments/{experiment}/runs/{run['run_id']}")
        WebDriverWait(browser, 60).until(lambda b: "test_bpd" in _body_text(b) and "fcd" in _body_text(b))
        text = _body_text(browser)
        assert run["tags"]["mlflow.note.content"] in text
        for key in ("test_bpd", "test_psnr", "fcd", "judge_confidence", "class_entropy", "total_correlation"):
            assert math.isclose(_metric_shown(text, key), run["metrics"][key], rel_tol=1e-9, abs_tol=1e-12), key
        if name == "beta=5":
            assert browser.save_screenshot(str(screenshots / "mlflow_run_beta_5.png"))
