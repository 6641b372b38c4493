"""Shared fixtures: a tiny fake CIFAR-10 archive in the official layout, and small configs."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_TARBALL = REPO.parent / "shared" / "cifar10" / "cifar-10-python.tar.gz"


def _batch(n: int, value: int, label_name: str) -> bytes:
    labels = np.repeat(np.arange(10), n // 10).tolist()
    # Constant pixels compress ~1000x, so a full-size archive is written and read in about a second.
    d = {"data": np.full((n, 3072), value, dtype=np.uint8), "labels": labels,
         "batch_label": label_name, "filenames": [f"img_{i}.png" for i in range(n)]}
    return pickle.dumps(d, protocol=2)


def make_archive(path: Path, n_train_per_batch: int = 10_000, n_test: int = 10_000, extra: dict | None = None,
                 drop: tuple[str, ...] = ()) -> Path:
    """Write a CIFAR-10-layout .tar.gz (constant pixels per batch); `extra` adds members (name -> bytes)."""
    members = {f"cifar-10-batches-py/data_batch_{i}": _batch(n_train_per_batch, 40 * i, f"training batch {i} of 5")
               for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = _batch(n_test, 7, "testing batch 1 of 1")
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
         "num_cases_per_batch": 10_000, "num_vis": 3072}, protocol=2)
    members.update(extra or {})
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, blob in members.items():
            if any(name.endswith(d) for d in drop):
                continue
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def need_dataset() -> None:
    """Skip a test that needs the local CIFAR-10 copy when it is missing, with the reason; in CI (CI=true) fail
    instead, so that end-to-end coverage cannot vanish silently."""
    if SHARED_TARBALL.is_file():
        return
    message = f"needs the CIFAR-10 copy at {SHARED_TARBALL}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: the end-to-end tests must run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def fake_archive(tmp_path_factory) -> Path:
    """A valid-content archive (balanced labels, right shapes): 60,000 images, ~180 MB unpacked."""
    return make_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this closed network refuses.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--window-size=1400,1000")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium driven by Selenium through the system chromedriver (Debian: chromium, chromium-driver).
    Browser tests fail, not skip, when it is missing: they only run when asked for (-m browser)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("browser tests need Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where browser tests save their screenshots ($VAELAB_SCREENSHOTS, else reports/screenshots, git-ignored)."""
    out = Path(os.environ.get("VAELAB_SCREENSHOTS", REPO / "reports" / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    """Run a command; fail the test with its output tail if it fails; return stdout + stderr."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def _env(repo: Path) -> dict:
    """The stages import the copy's own package (PYTHONPATH wins over the editable install)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(repo / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git_env(repo: Path) -> dict:
    """`_env(repo)` plus a git identity (for commits in temporary copies) and no DVC analytics."""
    return {**_env(repo), **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_small_repo(dest: Path) -> Path:
    """A temporary git repository holding this project's tracked files, set to a tiny, one-epoch run."""
    need_dataset()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["sources"] = [str(SHARED_TARBALL)]
    params["data"]["url"] = "http://127.0.0.1:9/unreachable.tar.gz"  # the local copy must be enough
    params["data"]["subset"] = 1000
    params["train"]["epochs"] = 1
    # Tiny classifiers and fewer samples: the pipeline's plumbing is under test here, not their accuracy. The
    # perceptual term is on, so that train reads the feature network as the default run would with it.
    for role in ("judge", "audit", "features"):
        params[role].update({"widths": [8, 16, 16], "epochs": 1, "batch_size": 256})
    params["train"]["perceptual_weight"] = params["train"]["perceptual_weight"] or 100.0
    params["evaluate"].update({"n_samples": 1000, "kid_subsets": 10, "iw_images": 100, "bootstrap": 50})
    # A tiny diffusion prior and hold-out: the sampler stage fits both samplers, evaluate judges both and the ceiling.
    # The diffusion prior is what the copy draws from, so that the end-to-end tests cover the non-default sampler.
    params["sampling"].update({"prior": "diffusion", "holdout": 100, "diffusion": {"hidden": 32, "blocks": 1, "timesteps": 100,
                                                             "train_steps": 20, "batch_size": 128, "lr": 0.001,
                                                             "sample_steps": 5, "temperature": 1.0}})
    # A few fine-tune steps in two checkpointed chunks, the adversarial term on for the last two.
    params["decoder"].update({"disc_widths": [8, 16, 16], "steps": 4, "batch_size": 16, "disc_start": 2,
                              "checkpoint_every": 2})
    params["timings"].update({"benchmark_steps": 2, "benchmark_warmup": 1, "profile_steps": 1})
    params["sweep"].update({"betas": [1, 64], "subset": 1000, "epochs": 1, "eval_images": 200, "traversal_dims": 2,
                            "spread_betas": [64], "spread_seeds": [1]})
    params["control"].update({"betas": [1, 8], "seeds": [0], "subset": 1000, "epochs": 1, "score_images": 1000,
                              "dci_train": 300, "dci_test": 200})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **GIT_IDENTITY}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "e2e"]):
        _run(cmd, dest, env)
    return dest


@pytest.fixture(scope="session")
def sampler_repo(tmp_path_factory) -> Path:
    """A tiny copy that reproduced `sampler@1` (download, features, train@1, decoder@1, sampler@1) and committed dvc.lock and
    the small git-tracked results; shared by the remote, queue and tracking-server tests (clone it, or share its
    cache, rather than change its files)."""
    repo = make_small_repo(tmp_path_factory.mktemp("sampler") / "repo")
    env = git_env(repo)
    _run(["dvc", "repro", "sampler@1"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "dvc repro sampler@1"], repo, env)
    return repo


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory) -> Path:
    """A tiny copy of the project after one `dvc repro` (betas 1 and 5): its report, metrics and MLflow store, and
    the repro's output in `repro.log` beside it. One per session: the slow and the browser tests read it (`.ci/run`
    runs them in one session) and leave it as they found it; a test that changes it works on `copy_of`."""
    repo = make_small_repo(tmp_path_factory.mktemp("reproduced") / "repo")
    (repo.parent / "repro.log").write_text(_run(["dvc", "repro"], repo, _env(repo)))
    return repo


def copy_of(repo: Path, dest: Path) -> Path:
    """A copy of a reproduced repo (git, DVC cache, models, MLflow store) that a test may change. The MLflow store
    records absolute artifact paths, so the copy's new runs keep their artifacts under the original's mlruns/:
    new folders only, never a file the original's runs use."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def assert_notebook_shows_the_run(repo: Path) -> None:
    """The executed hand-in (stage `notebook`) of `repo` shows that repo's run: an output under every code cell and
    no error, the five items, and the β table's numbers equal to its metrics files for every β of params.yaml."""
    import nbformat

    from vaelab import layout

    params = yaml.safe_load((repo / "params.yaml").read_text())
    nb = nbformat.read(repo / layout.NOTEBOOK_EXECUTED, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.outputs for c in code), [c.source[:40] for c in code if not c.outputs]
    assert 'RUN = "none"' in code[0].source
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     + str(o.get("text", "")) for o in outputs)
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "class Encoder" in html + text and "def vae_loss" in html + text  # 1: the source
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    betas = params["train"]["betas"]
    # 2-4: the overlaid curves; per beta its curves, two grids and three interpolations; the sweep's R-D plane
    assert len(images) >= 1 + len(betas) * 6 + 1
    sweep = params["sweep"]["betas"]
    assert f"Along the sweep (β = {min(sweep):g} to {max(sweep):g}" in text  # 5: the summary, an analysis of β
    assert "models:/cifar10-vae@beta-" in text  # the MLflow links
    table = next(c for c in code if "sampler_fcd" in c.source).outputs[0]["data"]["text/plain"]
    for beta in betas:
        ev = json.loads((repo / layout.BetaPaths(str(beta)).eval_metrics).read_text())
        row = next(line for line in table.splitlines() if line.split()[:1] == [str(beta)])
        assert [float(v) for v in row.split()[1:4]] == [round(ev[k], 3) for k in ("test_bpd", "rate_nats", "test_psnr")]
