"""Faults provoked for real: a training stage killed with SIGKILL resumes bit-identically, the same seed gives the
same model, a NaN keeps the last good checkpoint, an unreachable or contended MLflow store is handled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO
from vaelab import data, storage, tracking
from vaelab.model import VAE
from vaelab.network import build
from vaelab.params import ClassifierConfig, ModelConfig, TrainConfig, to_dict
from vaelab.train import NonFiniteLossError, train

SMALL = ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=0)
CPU = torch.device("cpu")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9, "mmd_weight": 100.0}], ids=["plain", "ema+mmd"])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, extra):
    cfg = TrainConfig(epochs=3, batch_size=8, warmup_steps=2, bf16=False, **extra)
    x, xt = images(32), images(8, 1)

    torch.manual_seed(0)
    full = VAE(SMALL)
    full_history = train(full, x, xt, 1.0, cfg, seed=0, device=CPU, progress=False)

    # Interrupted after epoch 1: the checkpoint goes through the file format (weights_only loading).
    torch.manual_seed(0)
    first = VAE(SMALL)

    class Stop(Exception):
        pass

    def save_then_stop(row, state):
        storage.save_checkpoint(tmp_path / "last.pt", {"state": state})
        raise Stop

    with pytest.raises(Stop):
        train(first, x, xt, 1.0, cfg, seed=0, device=CPU, progress=False, on_epoch=save_then_stop)
    state = storage.load_checkpoint(tmp_path / "last.pt")["state"]
    assert state["epoch"] == 1 and len(state["history"]) == 1

    torch.manual_seed(123)  # a fresh process: another global RNG state and fresh weights
    resumed = VAE(SMALL)
    history = train(resumed, x, xt, 1.0, cfg, seed=0, device=CPU, progress=False, resume=state)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for key in ("train_loss", "test_bpd", "test_kl"):
        assert [r[key] for r in history] == [r[key] for r in full_history]
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = VAE(SMALL)
    saved = []

    def checkpoint_then_poison(row, state):
        storage.save_checkpoint(tmp_path / "last.pt", {"state": state})
        saved.append(row["epoch"])
        with torch.no_grad():
            model.decoder.out.bias.fill_(float("nan"))  # the next step diverges

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1.*likely cause"):
        train(model, images(16), images(8), 1.0, TrainConfig(epochs=3, batch_size=8, bf16=False), seed=0,
              device=CPU, progress=False, on_epoch=checkpoint_then_poison)
    assert saved == [1]
    state = storage.load_checkpoint(tmp_path / "last.pt")["state"]
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoints_never_unpickle_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    torch.save({"state": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        storage.load_checkpoint(tmp_path / "evil.pt")


def _stage(cmd: list[str], cwd: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=cwd, env=env, capture_output=True, text=True, **kw)


def _env(store: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_a_missing_feature_network_stops_train_before_any_work(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["train"]["perceptual_weight"] > 0  # the default needs the feature network
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = _stage(["vaelab.stages.train", "--beta", "1"], tmp_path, _env(f"sqlite:///{tmp_path}/mlflow.db"), timeout=120)
    assert r.returncode == 2 and "models/features/features.pt" in r.stderr and "dvc repro features" in r.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["perceptual_weight"] = 0  # no feature network needed: the store is what fails
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.perf_counter()
    r = _stage(["vaelab.stages.train", "--beta", "1"], tmp_path, _env("http://127.0.0.1:9"), timeout=120)
    assert r.returncode == 1
    assert "http://127.0.0.1:9" in r.stderr and "unreachable" in r.stderr
    assert time.perf_counter() - t0 < 60
    # Before any work: no dataset was read (there is none here), nothing was written.
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()
    assert not (tmp_path / "checkpoints").exists()


def test_parallel_stages_share_a_fresh_sqlite_store(tmp_path):
    """Two processes create and log into the same new store at once (as `dvc queue start -j 2` does)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import sys; from vaelab import tracking; uri = sys.argv[1]\n"
            "tracking.prepare_store(uri, 'exp')\n"
            "with tracking.run(uri, 'exp', 'run-' + sys.argv[2]):\n"
            "    tracking.log_metrics({'x': float(sys.argv[2])}, step=1)\n")
    env = _env(uri)
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(i)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    runs = tracking.find_runs(uri, "exp")
    assert sorted(r["name"] for r in runs) == ["run-0", "run-1", "run-2"]
    assert all(r["status"] == "FINISHED" for r in runs)


@pytest.fixture(scope="module")
def train_workspace(tmp_path_factory, fake_archive):
    """A folder with params.yaml (a small, 5-epoch run) and the extracted (fake) dataset."""
    root = tmp_path_factory.mktemp("ws")
    target = root / "data" / data.BATCHES_DIR
    data.prepare([fake_archive], "http://127.0.0.1:9/x", "0" * 32, target, 1.0)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["subset"] = 1024
    params["train"].update({"epochs": 5, "batch_size": 64, "warmup_steps": 10})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The default trains with the perceptual term: a small, untrained feature network stands in for stage features.
    features = ClassifierConfig(arch="vgg", widths=(8, 16, 16), bf16=False)
    torch.manual_seed(0)
    storage.save_model(root / "models" / "features" / "features.pt", build(features),
                       {"role": "features", "classifier": to_dict(features), "seed": 0})
    return root


def _copy_workspace(src: Path, dest: Path) -> Path:
    dest.mkdir()
    (dest / "params.yaml").write_text((src / "params.yaml").read_text())
    (dest / "data").symlink_to(src / "data")
    (dest / "models").mkdir()
    (dest / "models" / "features").symlink_to(src / "models" / "features")
    return dest


def _result(ws: Path) -> tuple[dict, pd.DataFrame, dict]:
    state, _ = storage.load_state(ws / "models" / "beta_1" / "model.pt")
    history = pd.read_csv(ws / "metrics" / "betas" / "beta_1" / "history.csv")
    return state, history.drop(columns=["epoch_seconds", "images_per_second"]), json.loads(
        (ws / "metrics" / "betas" / "beta_1" / "train.json").read_text())


def _start_until_checkpoint(ws: Path, store: str, ckpt: Path, epoch: int) -> subprocess.Popen:
    """Start stage train@1 in ws and return it, still running, once its checkpoint holds `epoch`."""
    proc = subprocess.Popen([sys.executable, "-m", "vaelab.stages.train", "--beta", "1"], cwd=ws, env=_env(store),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and storage.load_checkpoint(ckpt)["state"]["epoch"] >= epoch:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed"
    return proc


def _rerun_resumes_to(ws: Path, store: str, interrupted_at: int, weights: dict, history: pd.DataFrame) -> dict:
    """Rerun train@1 in ws: it must resume after epoch `interrupted_at` and end with exactly these weights and
    history; returns its train.json."""
    r = _stage(["vaelab.stages.train", "--beta", "1"], ws, _env(store), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming after epoch {interrupted_at}" in r.stdout
    wk, hk, jk = _result(ws)
    assert all(torch.equal(weights[k], wk[k]) for k in weights)
    pd.testing.assert_frame_equal(history, hk)
    return jk


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes_bit_identically(train_workspace, tmp_path):
    # Two uninterrupted runs: same params and seed, same weights and metrics (determinism).
    runs = []
    for name in ("a", "b"):
        ws = _copy_workspace(train_workspace, tmp_path / name)
        r = _stage(["vaelab.stages.train", "--beta", "1"], ws, _env(f"sqlite:///{ws / 'mlflow.db'}"), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(_result(ws))
    (wa, ha, ja), (wb, hb, jb) = runs
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    pd.testing.assert_frame_equal(ha, hb)
    assert ja["final_test_bpd"] == jb["final_test_bpd"]

    # Killed with SIGKILL after the epoch-2 checkpoint, in the middle of epoch 3; then the stage is rerun.
    ws = _copy_workspace(train_workspace, tmp_path / "killed")
    store = f"sqlite:///{ws / 'mlflow.db'}"
    ckpt = ws / "checkpoints" / "beta_1" / "last.pt"
    proc = _start_until_checkpoint(ws, store, ckpt, epoch=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ws / "models" / "beta_1" / "model.pt").exists()  # nothing final was written
    interrupted_at = storage.load_checkpoint(ckpt)["state"]["epoch"]
    jk = _rerun_resumes_to(ws, store, interrupted_at, wa, ha)
    assert jk["final_test_bpd"] == ja["final_test_bpd"]
    assert not ckpt.exists()  # a finished stage leaves no checkpoint to resume from

    # MLflow: the interrupted run continued, no duplicate run and no duplicate epoch.
    (run,) = tracking.find_runs(store, "cifar10-beta-vae")
    assert run["status"] == "FINISHED" and run["tags"]["resumed_from_epoch"] == str(interrupted_at)
    steps = [s for s, _ in tracking.metric_history(store, run["run_id"], "train_loss")]
    assert steps == [1, 2, 3, 4, 5]


def test_the_same_weights_give_the_same_bytes_and_the_same_identity(tmp_path):
    """Saving the same weights twice writes the same bytes (through memory: no temporary file name is recorded), so
    DVC sees an unchanged output; weights_md5, the identity a sampler and a preset record, ignores the config and
    changes with one value."""
    import hashlib

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(torch.bfloat16)
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    storage.save_model(a, model, {"x": 1})
    storage.save_model(b, model, {"x": 1})
    storage.save_model(c, model, {"x": 2})
    assert hashlib.md5(a.read_bytes()).digest() == hashlib.md5(b.read_bytes()).digest()
    assert hashlib.md5(a.read_bytes()).digest() != hashlib.md5(c.read_bytes()).digest()
    assert storage.weights_md5(a) == storage.weights_md5(b) == storage.weights_md5(c)
    with torch.no_grad():
        model[1].bias[0] += 1
    storage.save_model(b, model, {"x": 1})
    assert storage.weights_md5(a) != storage.weights_md5(b)


def _stage_processes(ws: Path) -> list[int]:
    """PIDs of live processes working in folder ws (the launcher and its torchrun workers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == ws.resolve():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return pids


@pytest.mark.slow
def test_two_processes_write_once_and_resume_after_sigkill_of_the_launcher(sampler_repo, tmp_path):
    """train.processes = 2 under torchrun on the real images: one MLflow run, one model, one registered version;
    kill -9 of the launcher takes its workers down, and the rerun resumes bit-identically."""
    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    # The real images, as the session's tiny reproduced copy unpacked them (read only).
    (base / "data" / data.BATCHES_DIR).symlink_to(sampler_repo / "data" / data.BATCHES_DIR)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["subset"] = 1024
    params["train"].update({"epochs": 3, "batch_size": 64, "warmup_steps": 10, "processes": 2})
    # The sampler stage registers the model; its diffusion prior at the shipped 6,000 steps would cost minutes here.
    params["sampling"]["diffusion"].update({"hidden": 32, "blocks": 1, "train_steps": 20, "sample_steps": 5})
    # The sampler decodes with the fine-tuned decoder: two steps of it.
    params["decoder"].update({"disc_widths": [8, 16, 16], "steps": 2, "batch_size": 16, "disc_start": 1})
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    features = ClassifierConfig(arch="vgg", widths=(8, 16, 16), bf16=False)
    torch.manual_seed(0)
    storage.save_model(base / "models" / "features" / "features.pt", build(features),
                       {"role": "features", "classifier": to_dict(features), "seed": 0})

    whole = _copy_workspace(base, tmp_path / "whole")
    store = f"sqlite:///{whole / 'mlflow.db'}"
    r = _stage(["vaelab.stages.train", "--beta", "1"], whole, _env(store), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc-per-node=2" in r.stdout and "× 2 processes" in r.stdout
    for stage in ("decoder", "sampler"):
        r = _stage([f"vaelab.stages.{stage}", "--beta", "1"], whole, _env(store), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    (run,) = [r for r in tracking.find_runs(store, "cifar10-beta-vae") if r["name"] == "beta=1"]
    assert run["status"] == "FINISHED" and run["params"]["train.processes"] == "2"
    assert [s for s, _ in tracking.metric_history(store, run["run_id"], "train_loss")] == [1, 2, 3]
    (version,) = tracking.model_versions(store, params["tracking"]["registered_model"])
    assert version["run_id"] == run["run_id"] and version["aliases"] == ["beta-1"]
    wa, ha, ja = _result(whole)
    assert ja["processes"] == 2 and len(ha) == 3

    killed = _copy_workspace(base, tmp_path / "killed")
    store = f"sqlite:///{killed / 'mlflow.db'}"
    ckpt = killed / "checkpoints" / "beta_1" / "last.pt"
    launcher = _start_until_checkpoint(killed, store, ckpt, epoch=2)
    assert len(_stage_processes(killed)) == 3  # torchrun and its two workers
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 30
    while _stage_processes(killed) and time.time() < deadline:
        time.sleep(0.1)
    assert not _stage_processes(killed), "workers outlived their launcher"
    state = storage.load_checkpoint(ckpt)["state"]
    assert len(state["torch_rng"]) == 2  # every rank's generator
    _rerun_resumes_to(killed, store, state["epoch"], wa, ha)
    (run,) = tracking.find_runs(store, "cifar10-beta-vae")
    assert [s for s, _ in tracking.metric_history(store, run["run_id"], "train_loss")] == [1, 2, 3]


@pytest.fixture(scope="module")
def decoder_workspace(tmp_path_factory, fake_archive):
    """A folder with a (fake) dataset, an untrained VAE saved as train@1 saves one, its MLflow run and params for a
    30-step fine-tune of its decoder, checkpointed every 5 steps."""
    root = tmp_path_factory.mktemp("decoder_ws")
    data.prepare([fake_archive], "http://127.0.0.1:9/x", "0" * 32, root / "data" / data.BATCHES_DIR, 1.0)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["subset"] = 256
    params["decoder"].update({"disc_widths": [8, 16, 16], "steps": 30, "batch_size": 16, "disc_start": 10,
                              "checkpoint_every": 5})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    torch.manual_seed(0)
    storage.save_model(root / "models" / "beta_1" / "model.pt", VAE(SMALL),
                       {"beta": 1.0, "seed": 0, "data": {"subset": 256}, "model": to_dict(SMALL),
                        "train": to_dict(TrainConfig())})
    return root


def _decoder_copy(src: Path, dest: Path) -> tuple[Path, str]:
    """A copy of the decoder workspace with its own MLflow store holding the β's train run; (folder, store)."""
    dest.mkdir()
    (dest / "params.yaml").write_text((src / "params.yaml").read_text())
    (dest / "data").symlink_to(src / "data")
    (dest / "models" / "beta_1").mkdir(parents=True)
    (dest / "models" / "beta_1" / "model.pt").write_bytes((src / "models" / "beta_1" / "model.pt").read_bytes())
    store = f"sqlite:///{dest / 'mlflow.db'}"
    code = ("import json, sys; from vaelab import tracking\n"
            "with tracking.run(sys.argv[1], 'cifar10-beta-vae', 'beta=1') as run_id:\n"
            "    json.dump({'run_id': run_id, 'run_name': 'beta=1', 'tracking_uri': sys.argv[1],"
            " 'experiment': 'cifar10-beta-vae'}, open(sys.argv[2], 'w'))\n")
    subprocess.run([sys.executable, "-c", code, store, str(dest / "models" / "beta_1" / "mlflow_run.json")],
                   env=_env(store), check=True, timeout=120)
    return dest, store


@pytest.mark.slow
def test_sigkill_of_the_decoder_finetune_then_rerun_resumes_bit_identically(decoder_workspace, tmp_path):
    straight, store_a = _decoder_copy(decoder_workspace, tmp_path / "a")
    r = _stage(["vaelab.stages.decoder", "--beta", "1"], straight, _env(store_a), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    tuned = straight / "models" / "decoder" / "beta_1" / "model.pt"
    rows = pd.read_csv(straight / "metrics" / "betas" / "beta_1" / "decoder_steps.csv")
    assert list(rows["step"]) == list(range(1, 31)) and (rows["lambda"][10:] > 0).all()

    ws, store = _decoder_copy(decoder_workspace, tmp_path / "killed")
    ckpt = ws / "checkpoints" / "beta_1" / "decoder.pt"
    proc = subprocess.Popen([sys.executable, "-m", "vaelab.stages.decoder", "--beta", "1"], cwd=ws, env=_env(store),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and storage.load_checkpoint(ckpt)["state"]["step"] >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ws / "models" / "decoder").exists()  # nothing final was written
    at = storage.load_checkpoint(ckpt)["state"]["step"]
    assert 10 <= at < 30
    r = _stage(["vaelab.stages.decoder", "--beta", "1"], ws, _env(store), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming after step {at}" in r.stdout
    # The same bytes as the run that was never stopped (encoder, decoder and σ̂), the same per-step rows.
    assert (ws / "models" / "decoder" / "beta_1" / "model.pt").read_bytes() == tuned.read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(ws / "metrics" / "betas" / "beta_1" / "decoder_steps.csv"), rows)
    assert not ckpt.exists()
    # MLflow: one fine-tune run, nested under the β's run, continued after the kill, each step logged once.
    runs = {r["name"]: r for r in tracking.find_runs(store, "cifar10-beta-vae")}
    assert set(runs) == {"beta=1", "beta=1/decoder"}
    run = runs["beta=1/decoder"]
    assert run["tags"]["mlflow.parentRunId"] == runs["beta=1"]["run_id"] and run["status"] == "FINISHED"
    assert run["tags"]["resumed_from_step"] == str(at)
    assert [s for s, _ in tracking.metric_history(store, run["run_id"], "lambda")] == list(range(1, 31))


@pytest.mark.slow
def test_a_failure_after_the_last_checkpoint_still_saves_the_tuned_decoder(decoder_workspace, tmp_path, monkeypatch):
    """The stage fails after its last checkpoint (the tracking server goes away at the artifact upload); the
    rerun finds every step done, skips the loop, and must still save the tuned decoder, not the one as trained."""
    from vaelab.stages import decoder

    straight, _ = _decoder_copy(decoder_workspace, tmp_path / "straight")
    monkeypatch.chdir(straight)
    assert decoder.main(["--beta", "1"]) == 0
    tuned = (straight / "models" / "decoder" / "beta_1" / "model.pt").read_bytes()
    trained, _ = storage.load_state(straight / "models" / "beta_1" / "model.pt")
    state, _ = storage.load_state(straight / "models" / "decoder" / "beta_1" / "model.pt")
    assert any(not torch.equal(trained[k], state[k]) for k in trained if k.startswith("decoder."))

    ws, _ = _decoder_copy(decoder_workspace, tmp_path / "failed")
    monkeypatch.chdir(ws)
    upload = tracking.log_artifact

    def unreachable(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(tracking, "log_artifact", unreachable)
    with pytest.raises(ConnectionError):
        decoder.main(["--beta", "1"])
    assert storage.load_checkpoint(ws / "checkpoints" / "beta_1" / "decoder.pt")["state"]["step"] == 30
    monkeypatch.setattr(tracking, "log_artifact", upload)
    (ws / "models" / "decoder" / "beta_1" / "model.pt").unlink()  # as `dvc repro` removes a stage's outputs first
    assert decoder.main(["--beta", "1"]) == 0
    assert (ws / "models" / "decoder" / "beta_1" / "model.pt").read_bytes() == tuned
