"""Stage timings: each stage writes its own time only when it succeeds (rank 0 only), the run's total is the sum
of the listed stages, and the benchmark and the profile measure the training step they name."""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from vaelab import layout, speed, storage, timings
from vaelab.params import ClassifierConfig, ModelConfig, Params, TrainConfig
from vaelab.precision import precision_name, uses_bf16
from vaelab.stages import runtime
from vaelab.params import from_dict
from vaelab.stages.timings import listed

TINY = Params(model=ModelConfig(latent_dim=4, widths=(4, 8, 8)),
              train=TrainConfig(batch_size=8, perceptual_weight=10.0, bf16=False),
              features=ClassifierConfig(arch="vgg", seed=2, widths=(4, 8, 8), bf16=False))


def test_a_stage_writes_its_time_only_when_it_succeeds_and_only_on_rank_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    assert runtime.finish("evaluate@1", 1) == 1
    assert not layout.timing_file("evaluate@1").exists()
    assert runtime.finish("evaluate@1", 0) == 0
    written = storage.read_json(layout.timing_file("evaluate@1"))
    assert written["stage"] == "evaluate@1" and 0 < written["seconds"] < 24 * 3600
    monkeypatch.setenv("RANK", "1")
    assert runtime.finish("train@1", 0) == 0
    assert not layout.timing_file("train@1").exists()


def test_process_seconds_grow_with_the_wall_clock():
    before = runtime.process_seconds()
    time.sleep(0.3)
    assert 0.25 <= runtime.process_seconds() - before < 5


def test_the_total_is_the_sum_of_the_stages_and_the_class_follows_the_benchmark():
    out = timings.summarise({"judge": 100.0, "train@1": 700.0, "report": 5.0}, {"plain": 950.0, "perceptual": 500.0},
                            {"data": 1.0, "decoder forward": 3.0})
    assert out["total_seconds"] == 805.0
    assert list(out["stages"]) == ["train@1", "judge", "report"]  # the slowest first
    assert out["machine_class"] == "faster" and out["benchmark_images_per_second"] == 950.0
    slow = timings.summarise({"judge": 1.0}, {"plain": 360.0, "perceptual": 200.0}, {"data": 1.0})
    assert slow["machine_class"] == "slower"
    md = timings.markdown(out, 128)
    assert "| `train@1` | 700 | 87.0% |" in md and "| **total** | **805** | |" in md and "13.4 min" in md
    assert "| decoder forward | 3.0 | 75.0% |" in md and "| **one step** | **4.0** | |" in md


def test_stage_times_of_betas_no_longer_listed_are_left_out():
    params = from_dict(Params, {"train": {"betas": [1, 5]},
                                "sweep": {"betas": [0.5, 64], "spread_betas": [64], "spread_seeds": [3]},
                                "control": {"betas": [1, 8], "seeds": [0, 2]}})
    assert listed("judge", params) and listed("train@1", params) and listed("evaluate@5", params)
    assert not listed("train@20", params) and not listed("evaluate@0.5", params)
    assert listed("sweep@0.5", params) and listed("sweep_eval@64", params) and not listed("sweep@5", params)
    assert listed("control@8-2", params) and not listed("control@8-1", params) and not listed("control@5-0", params)
    assert listed("sweep_seed@64-3", params) and listed("sweep_seed_eval@64-3", params)
    assert not listed("sweep_seed@64-1", params) and not listed("sweep_seed_eval@0.5-3", params)


def test_the_benchmark_and_the_profile_time_the_training_step():
    params = dataclasses.replace(TINY)
    fast = speed.throughput(params, 8, steps=2, warmup=1, bf16=False)
    assert fast["plain"] > 0 and fast["perceptual"] > 0
    profile = speed.profile_step(params, 8, steps=2, bf16=False)
    assert set(profile) >= {"data", "encoder forward", "decoder forward", "feature net forward on x",
                            "feature net forward on x̂", "backward, VAE only", "optimiser step"}
    assert all(v >= 0 for k, v in profile.items() if k != "backward of the feature net on x̂")


def test_a_train_step_changes_the_weights():
    model, opt, x_u8, activations = speed.setup(TINY, 8, bf16=False)
    before = [p.detach().clone() for p in model.parameters()]
    speed.train_step(TINY, model, opt, x_u8, activations, 10.0, bf16=False)()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_on_a_cpu_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr("vaelab.precision.cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert uses_bf16(cpu, True) is native and not uses_bf16(cpu, False)
    assert precision_name(cpu, True) == ("bf16" if native else "fp32")
    assert uses_bf16(torch.device("cuda"), True)  # a GPU computes bf16 itself
