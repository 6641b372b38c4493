"""`dvc plots show`: the top-level plots of dvc.yaml overlay every beta (template .dvc/plots/overlay.json) and the
page renders offline (.dvc/plots/offline.html, vega/vega-lite/vega-embed inlined; wired in .dvc/config).

Each test builds a small git + DVC repository holding the top-level `plots:` section of the real dvc.yaml, the real
.dvc/config and .dvc/plots/*, and a synthetic reports/comparison/training_curves.csv with three betas."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CURVES = "reports/comparison/training_curves.csv"
COLUMNS = ("beta", "epoch", "train_loss", "train_recon", "train_kl", "train_bpd", "test_loss", "test_recon", "test_kl",
           "test_bpd", "lr", "epoch_seconds", "images_per_second")
BETAS = ("0.5", "2", "10")  # in numeric order, which a string sort would get wrong (0.5, 10, 2)
EPOCHS = 4
REQUIRED = {"test_bpd", "train_bpd", "test_kl", "test_recon", "train_loss", "lr"}
CDN = re.compile(r"cdn\.jsdelivr\.net|unpkg\.com|cdnjs|googleapis", re.IGNORECASE)
REMOTE_SRC = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def _top_level_plots() -> list[dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]


def _plot_ids() -> list[str]:
    return [next(iter(p)) for p in _top_level_plots()]


def _env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _run(cmd: list[str], cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _write_curves(path: Path, betas=BETAS, shift: float = 0.0) -> None:
    """A long table like the report stage's: one row per (beta, epoch), values as the CSV writer leaves them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for beta in betas:
            b = float(beta)
            for epoch in range(1, EPOCHS + 1):
                recon, kl = 14000 - 300 * epoch + 50 * b + shift, 200 / (1 + b) + 5 * epoch
                bpd = (recon + kl) / (3072 * 0.6931471805599453)
                w.writerow([beta, epoch, recon + b * kl + 100, recon + 100, kl, bpd + 0.05, recon + b * kl, recon, kl,
                            bpd, 0.002 * (1 - epoch / (EPOCHS + 1)), 30.0, 1700.0])


def make_plots_repo(dest: Path, betas=BETAS) -> Path:
    """git + dvc repo with the real plot configuration (top-level plots only) and synthetic curves; committed."""
    dest.mkdir(parents=True)
    _run(["git", "init", "-q"], dest)
    _run(["dvc", "init", "-q"], dest)
    shutil.copy2(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", dest / ".dvc" / "plots")
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"plots": _top_level_plots()}, sort_keys=False, allow_unicode=True))
    _write_curves(dest / CURVES, betas)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "plots"], dest)
    return dest


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    return make_plots_repo(tmp_path_factory.mktemp("dvc_plots") / "repo")


def _show_json(repo: Path, *args: str) -> dict:
    return json.loads(_run(["dvc", "plots", *args, "--json"], repo))


def _values(entry: dict) -> list[dict]:
    return entry["content"]["data"]["values"]


# ---------------------------------------------------------------------------------------------------------- fast


def test_dvc_yaml_declares_one_overlay_plot_per_quantity():
    plots = _top_level_plots()
    ids = _plot_ids()
    assert REQUIRED <= set(ids), f"missing top-level plots: {REQUIRED - set(ids)}"
    assert len(ids) == len(set(ids))
    for plot in plots:
        (pid, props), = plot.items()
        assert props["template"] == "overlay" and props["x"] == "epoch", pid
        assert props["y"] == {CURVES: pid}, pid
        assert props.get("title") and props.get("y_label") and props.get("x_label") == "epoch", pid
    labels = {next(iter(p)): next(iter(p.values()))["y_label"] for p in plots}
    assert "bits/dim" in labels["test_bpd"] and "bits/dim" in labels["train_bpd"]
    assert all("nats" in labels[q] for q in ("test_kl", "test_recon", "train_loss"))


def test_plots_show_json_overlays_every_beta(plots_repo):
    out = _show_json(plots_repo, "show")
    assert not out.get("errors"), out.get("errors")
    data = out["data"]
    ids = _plot_ids()
    titles = {next(iter(p)): next(iter(p.values()))["title"] for p in _top_level_plots()}
    assert sorted(data) == sorted(ids), "one rendered plot per top-level plot, nothing else"
    for pid in ids:
        (entry,) = data[pid]
        assert entry["type"] == "vega" and entry["revisions"] == ["workspace"]
        content = entry["content"]
        rows = _values(entry)
        assert {r["beta"] for r in rows} == set(BETAS), pid  # the beta column survives DVC's conversion
        assert len(rows) == len(BETAS) * EPOCHS
        enc = content["encoding"]
        assert enc["x"]["field"] == "epoch" and enc["y"]["field"] == pid
        assert enc["color"]["title"] == "β" and enc["color"]["field"] == "beta_value"
        assert {"calculate": "toNumber(datum.beta)", "as": "beta_value"} in content["transform"]
        assert enc["strokeDash"]["field"] == "rev"
        assert content["mark"]["type"] == "line" and content["mark"]["point"]
        assert [t["field"] for t in enc["tooltip"]] == ["beta", "epoch", pid, "rev"]
        assert content["title"]["text"] == titles[pid]
        assert "<DVC_METRIC" not in json.dumps(content), pid


def test_plots_show_json_takes_any_betas(tmp_path):
    """Betas come from the data, not from the template: 2 or 7 betas, including ones a string sort misorders."""
    betas = ("0.1", "0.25", "1", "2", "4", "10", "50")
    repo = make_plots_repo(tmp_path / "repo", betas=betas)
    data = _show_json(repo, "show")["data"]
    for pid in _plot_ids():
        assert {r["beta"] for r in _values(data[pid][0])} == set(betas)


def test_plots_diff_keeps_betas_and_tells_revisions_apart(tmp_path):
    repo = make_plots_repo(tmp_path / "repo")
    _write_curves(repo / CURVES, shift=-200.0)  # the workspace now differs from HEAD
    out = _show_json(repo, "diff", "HEAD")
    assert not out.get("errors"), out.get("errors")
    for pid in _plot_ids():
        (entry,) = out["data"][pid]
        assert set(entry["revisions"]) == {"HEAD", "workspace"}
        rows = _values(entry)
        assert {(r["rev"], r["beta"]) for r in rows} == {(rev, b) for rev in ("HEAD", "workspace") for b in BETAS}
        assert entry["content"]["encoding"]["strokeDash"]["field"] == "rev"


def test_html_template_is_wired_and_self_contained():
    config = _run(["dvc", "config", "plots.html_template"], REPO).strip()
    template = REPO / ".dvc" / config  # DVC resolves a relative html_template against .dvc/
    assert template == REPO / ".dvc" / "plots" / "offline.html" and template.is_file()
    html = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html, "dvc-render would insert its CDN <script src> tags there"
    assert not REMOTE_SRC.search(html) and "<script src" not in html.lower()
    assert not CDN.search(html)
    assert "connect-src 'none'" in html  # the page may not fetch anything
    # The header names each inlined package@version with its license, as pinned in the vendoring script.
    pins = re.findall(r'^\s*"(vega(?:-lite|-embed)?) (\S+) (\S+) (sha512-\S+)"$',
                      (REPO / "scripts" / "vendor_vega.sh").read_text(), re.MULTILINE)
    assert {p[0] for p in pins} == {"vega", "vega-lite", "vega-embed"}
    for name, version, license_, integrity in pins:
        assert f"{name}@{version}  license {license_}  npm {integrity}" in html
        assert f"<script>/* {name}@{version} | {license_} |" in html
    # Each library is really there, and the versions stay on the majors dvc-render's templates are written for.
    assert html.count("<script>/* vega") == 3
    versions = {name: version for name, version, _, _ in pins}
    assert versions["vega"].startswith("5.") and versions["vega-lite"].startswith("5.")
    assert versions["vega-embed"].startswith("6.")


@pytest.mark.slow
def test_the_vendoring_script_rebuilds_the_committed_page_byte_for_byte(tmp_path):
    """scripts/vendor_vega.sh, run for real (npm pack from the registry, integrity checked), writes exactly the
    committed .dvc/plots/offline.html: the page is what the script says it is, and the script still works."""
    if shutil.which("npm") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("needs node and npm (Debian's nodejs, npm)")
        pytest.skip("needs node and npm")
    out = tmp_path / "offline.html"
    r = subprocess.run(["bash", str(REPO / "scripts" / "vendor_vega.sh"), str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert out.read_bytes() == (REPO / ".dvc" / "plots" / "offline.html").read_bytes()


def test_plots_show_html_has_no_remote_scripts(plots_repo, tmp_path):
    out = tmp_path / "plots"
    _run(["dvc", "plots", "show", "-o", str(out)], plots_repo)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert not REMOTE_SRC.search(html) and not CDN.search(html)
    for pid in _plot_ids():
        assert f"vegaEmbed('#{pid}', spec)" in html


# ------------------------------------------------------------------------------------------------------- browser


_PAGE_STATE = """
const s = window.vaelabPlots;
const charts = [...document.querySelectorAll('.plots > div')].map(div => ({
  id: div.id,
  svgs: div.querySelectorAll('.vega-embed svg.marks').length,
  lines: div.querySelectorAll('.mark-line.role-mark path').length,
  legends: [...div.querySelectorAll('g.role-legend')].map(g => ({
    title: [...g.querySelectorAll('.role-legend-title text')].map(t => t.textContent).join(' '),
    labels: [...g.querySelectorAll('.role-legend-label text')].map(t => t.textContent),
  })),
  title: [...div.querySelectorAll('.role-title-text text, .role-title text')].map(t => t.textContent).join(' '),
}));
return {rendered: s.rendered, empty: s.empty, errors: s.errors, charts: charts,
        resources: performance.getEntriesByType('resource').map(e => e.name),
        location: location.href};
"""


@pytest.mark.browser
def test_plots_page_renders_offline_in_chromium(plots_repo, browser, screenshots, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "plots"
    _run(["dvc", "plots", "show", "-o", str(out)], plots_repo)
    index = out / "index.html"
    assert not REMOTE_SRC.search(index.read_text(encoding="utf-8"))
    try:
        browser.get_log("browser")  # drop entries from earlier pages
        has_log = True
    except Exception:  # noqa: BLE001  (not every driver exposes the console log)
        has_log = False

    t0 = time.perf_counter()
    browser.get(index.as_uri())
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: d.execute_script("return !!(window.vaelabPlots && window.vaelabPlots.done)"))
    render_s = time.perf_counter() - t0
    state = browser.execute_script(_PAGE_STATE)
    size = browser.get_window_size()
    try:  # the whole page, not just the first screen
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(size["width"], height + (size["height"] - browser.execute_script(
            "return window.innerHeight")))
        browser.save_screenshot(str(screenshots / "dvc_plots.png"))
    finally:
        browser.set_window_size(size["width"], size["height"])

    ids = _plot_ids()
    assert state["errors"] == [], state["errors"]
    assert state["rendered"] == len(ids) and state["empty"] == 0
    assert [c["id"] for c in state["charts"]] == ids
    for chart in state["charts"]:
        assert chart["svgs"] == 1, chart
        assert chart["lines"] == len(BETAS), f"one line per beta: {chart}"
        legends = {lg["title"]: lg["labels"] for lg in chart["legends"]}
        assert legends.get("β") == list(BETAS), chart  # every beta, in numeric order
        assert legends.get("revision") == ["workspace"], chart
    titles = {next(iter(p)): next(iter(p.values()))["title"] for p in _top_level_plots()}
    assert all(titles[c["id"]] in c["title"] for c in state["charts"]), state["charts"]

    # Offline: the page loaded nothing but itself (no http(s) resource, no script file at all) ...
    assert state["location"].startswith("file://")
    assert state["resources"] == [], state["resources"]
    # ... and its policy would refuse a fetch even with a network.
    blocked = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('http://127.0.0.1:9/probe').then(() => done('fetched'), e => done(String(e)));")
    assert blocked != "fetched"
    assert any("connect-src" in e for e in browser.execute_script("return window.vaelabPlots.errors")), \
        "the fetch was not refused by the page's Content-Security-Policy"

    if has_log:  # console errors, and vega's warnings (console.warn "WARN ..."), other than the probe's refusal
        logged = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")
                  and "127.0.0.1:9/probe" not in e.get("message", "")
                  and "Content Security Policy" not in e.get("message", "")]
        assert logged == [], logged
    assert render_s < 20, f"rendering took {render_s:.1f} s"
