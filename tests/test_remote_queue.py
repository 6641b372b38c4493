"""Sharing results between clones (docs/dvc-remote.md) and parallel queued sweeps (docs/sweeps.md).

One tiny copy of the project (make_small_repo) reproduces `sampler@1` (download, features, train@1, decoder@1, sampler@1) and
commits the result; then
- a DVC remote, a local directory and an S3 bucket (moto's server): `dvc push --run-cache`, `git clone`,
  `dvc pull --run-cache`, and `dvc repro` reruns nothing in the clone;
- the run-cache: a clone sharing the cache but without dvc.lock restores every stage instead of running it;
- a queued sweep: two experiments run in parallel by `dvc queue start -j 2`, both logged to the repository's own
  MLflow store and tagged with their DVC experiment names."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import _run, free_port, git_env

pytestmark = pytest.mark.slow

TARGET = "sampler@1"
STAGES = ("download", "features", "train@1", "decoder@1", "sampler@1")  # what `dvc repro sampler@1` runs


def _mtimes(repo: Path) -> dict[str, float]:
    files = [repo / "data" / "cifar-10-batches-py" / "data_batch_1", repo / "models" / "features" / "features.pt",
             repo / "models" / "beta_1" / "model.pt", repo / "models" / "sampler" / "beta_1" / "sampler.pt"]
    return {str(f.relative_to(repo)): f.stat().st_mtime for f in files}


@pytest.fixture(scope="module")
def source(sampler_repo) -> Path:
    """The session's tiny copy that reproduced `sampler@1` and committed the result (conftest.sampler_repo)."""
    return sampler_repo


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on a free local port, with an empty bucket; stopped at the end."""
    import boto3

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.3)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="vaelab")
        yield endpoint, creds
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_push_clone_pull_reruns_nothing(kind, source, tmp_path, request):
    env = git_env(source)
    name = f"shared-{kind}"
    if kind == "local":
        setup = [["dvc", "remote", "add", "-d", "-f", name, str(tmp_path / "remote")]]
    else:
        endpoint, creds = request.getfixturevalue("s3_server")
        env |= creds  # credentials only in the environment: never in .dvc/config
        setup = [["dvc", "remote", "add", "-d", "-f", name, f"s3://vaelab/{tmp_path.name}"],
                 ["dvc", "remote", "modify", name, "endpointurl", endpoint]]
    for cmd in setup:
        _run(cmd, source, env)
    assert "testing" not in (source / ".dvc" / "config").read_text()
    _run(["git", "commit", "-qam", f"remote {name}"], source, env)  # the clone finds the remote in .dvc/config
    pushed = _run(["dvc", "push", "--run-cache"], source, env)
    assert re.search(r"\d+ files? pushed", pushed), pushed

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(source), str(clone)], tmp_path, env)
    env = git_env(clone) | ({} if kind == "local" else creds)
    # Only what the reproduced target needs (this tiny copy did not reproduce the other stages of dvc.lock).
    pulled = _run(["dvc", "pull", "--run-cache", "--with-deps", TARGET], clone, env)
    assert (clone / "models" / "beta_1" / "model.pt").is_file(), pulled
    assert (clone / ".dvc" / "cache" / "runs").is_dir(), pulled  # the stage results came along
    assert "up to date" in _run(["dvc", "status", "--with-deps", TARGET], clone, env)

    before = _mtimes(clone)
    log = _run(["dvc", "repro", TARGET], clone, env)
    assert "Running stage" not in log, log
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in log, log
    assert _mtimes(clone) == before
    assert not (clone / "mlflow.db").exists()  # no stage ran, so none logged anything
    assert _run(["git", "status", "--porcelain"], clone, env).strip() == ""


def test_run_cache_restores_every_stage(source, tmp_path):
    """Without dvc.lock, a clone sharing the source's cache restores each stage from the run-cache: nothing runs."""
    env = git_env(source)
    runs = _run(["grep", "-rh", "^cmd:", str(source / ".dvc" / "cache" / "runs")], source, env)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(source), str(clone)], tmp_path, env)
    env = git_env(clone)
    _run(["dvc", "cache", "dir", "--local", str(source / ".dvc" / "cache")], clone, env)
    (clone / "dvc.lock").unlink()
    log = _run(["dvc", "repro", TARGET], clone, env)
    restored = re.findall(r"Stage '([^']+)' is cached - skipping run, checking out outputs", log)
    ran = re.findall(r"Running stage '([^']+)'", log)
    assert sorted(restored) == sorted(STAGES), f"ran {ran}; run-cache entries:\n{runs}\n{log}"
    assert (clone / "models" / "beta_1" / "model.pt").is_file()
    # The restored small files are the ones git holds: nothing differs from the commit but the rewritten dvc.lock.
    changed = _run(["git", "status", "--porcelain"], clone, env).split("\n")
    assert [c for c in changed if c.strip() and not c.endswith("dvc.lock")] == []


def _queue_status(repo: Path, env: dict) -> dict[str, str]:
    out = _run(["dvc", "queue", "status"], repo, env, timeout=120)
    return {m.group(1): m.group(2) for m in re.finditer(r"^\w+\s+(exp-\w+)\s+.*?\s(\w+)\s*$", out, re.M)}


def test_queued_sweep_runs_in_parallel_into_one_store(source):
    from vaelab import tracking

    repo, env = source, git_env(source)
    # One thread per run: two runs each using every core of a small machine thrash (about 60x slower here).
    sweep = {"exp-a": 2, "exp-b": 3}
    for name, beta in sweep.items():
        _run(["dvc", "exp", "run", "--queue", "--name", name, "-S", f"train.betas=[{beta}]", "-S", "train.epochs=1",
              "-S", "train.threads=1", "train"], repo, env)
    try:
        # The workers outlive `dvc queue start` and hold its stdout: never capture it.
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, timeout=120)
        deadline = time.monotonic() + 600
        while True:
            status = _queue_status(repo, env)
            if all(status.get(n) in ("Success", "Failed") for n in sweep) or time.monotonic() > deadline:
                break
            time.sleep(3)
        logs = {n: subprocess.run(["dvc", "queue", "logs", n], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=120).stdout[-3000:] for n in sweep}
        assert all(status.get(n) == "Success" for n in sweep), f"{status}\n{logs}"
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=120)

    shown = _run(["dvc", "exp", "show", "--no-pager", "--csv"], repo, env)
    for name in sweep:
        assert name in shown, shown
    # Both ran in parallel workspaces under .dvc/tmp/exps, yet logged to the repository's own store.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    runs = tracking.find_runs(f"sqlite:///{repo.resolve() / 'mlflow.db'}", params["tracking"]["experiment"])
    tagged = {r["tags"].get("dvc_experiment"): r for r in runs if r["tags"].get("dvc_experiment")}
    assert set(tagged) == set(sweep), [r["tags"] for r in runs]
    for name, beta in sweep.items():
        run = tagged[name]
        assert run["status"] == "FINISHED" and run["tags"]["dvc_stage"] == f"train@{beta}", run
        assert run["name"] == f"beta={beta}"
