"""Shared fixtures: a tiny fake CIFAR-10 archive in the official layout, and small configs."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

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
    import os

    out = Path(os.environ.get("VAELAB_SCREENSHOTS", REPO / "reports" / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out
