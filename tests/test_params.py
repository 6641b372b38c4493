"""params.yaml: the shipped file is valid, and bad values are rejected naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vaelab.params import Params, ParamsError, from_dict, load_params
from vaelab.presets import load_presets

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_load():
    p = load_params(REPO / "params.yaml")
    assert p.train.betas == (1.0, 5.0)
    assert p.data.subset == 0
    assert isinstance(p, Params)


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"betas": [1, 5], "epoch": 3}}, "train.epoch"),
        ({"modle": {}}, "modle"),
        ({"train": {"betas": [0]}}, "train.betas"),
        ({"train": {"betas": [-1, 5]}}, "train.betas"),
        ({"train": {"betas": [".nan"]}}, "train.betas[0]"),
        ({"train": {"betas": ["five"]}}, "train.betas[0]"),
        ({"train": {"betas": []}}, "train.betas"),
        ({"train": {"betas": [1, 1]}}, "train.betas"),
        ({"train": {"betas": 5}}, "train.betas"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"bf16": "yes"}}, "train.bf16"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim"),
        ({"model": {"likelihood": "bernoulli"}}, "model.likelihood"),
        ({"data": {"subset": -1}}, "data.subset"),
        ({"seed": True}, "seed"),
        ({"data": "cifar"}, "data"),
        ({"evaluate": {"iw_samples": 0}}, "evaluate.iw_samples"),
        ({"evaluate": {"tc_batch_size": 1}}, "evaluate.tc_batch_size"),
        ({"evaluate": {"hue_levels_deg": [0, 30]}}, "evaluate.hue_levels_deg"),
        ({"evaluate": {"brightness_levels": [1.5]}}, "evaluate.brightness_levels"),
        ({"evaluate": {"shift_levels_px": [0.5]}}, "evaluate.shift_levels_px[0]"),
        ({"evaluate": {"kid_subsets": 0}}, "evaluate.kid_subsets"),
        ({"evaluate": {"n_sample": 10}}, "evaluate.n_sample"),
        ({"judge": {"widths": [32, 64]}}, "judge.widths"),
        ({"judge": {"whiten_width": 7}}, "judge.whiten_width"),
        ({"judge": {"epochs": 0}}, "judge.epochs"),
        ({"tracking": {"judge_experiment": " "}}, "tracking.judge_experiment"),
        ({"tracking": {"registered_model": "my model/v1"}}, "tracking.registered_model"),
        ({"sampling": {"temperature": 1.0}}, "sampling.temperature"),
        ({"sampling": {"diffusion": {"temperature": 0}}}, "sampling.diffusion.temperature"),
        ({"sampling": {"diffusion": {"temperature": float("nan")}}}, "sampling.diffusion.temperature"),
        ({"sampling": {"diffusion": {"sample_steps": 2000}}}, "sampling.diffusion.sample_steps"),
        ({"sampling": {"diffusion": {"hidden": 0}}}, "sampling.diffusion.hidden"),
        ({"sampling": {"prior": "flow"}}, "sampling.prior"),
        ({"sampling": {"holdout": -1}}, "sampling.holdout"),
        ({"sampling": {"gmm_components": 0}}, "sampling.gmm_components"),
        ({"sampling": {"gmm_iterations": 0}}, "sampling.gmm_iterations"),
        ({"train": {"mmd_weight": -1}}, "train.mmd_weight"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
        ({"presets": [1]}, "presets"),
        ({"presets": {"Base Line": {}}}, "presets.Base Line"),
        ({"presets": {"baseline": {"evaluate": {"n_samples": 10}}}}, "presets.baseline.evaluate"),
        ({"presets": {"baseline": {"model": {"latent_dims": 8}}}}, "presets.baseline.model.latent_dims"),
        ({"presets": {"baseline": {"model": {"latent_dim": 0}}}}, "presets.baseline.model.latent_dim"),
        ({"presets": {"baseline": {"train": {"epochs": "six"}}}}, "presets.baseline.train.epochs"),
        ({"presets": {"baseline": {"description": 3}}}, "presets.baseline.description"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, raw, key):
    if raw.get("train", {}).get("betas") == [".nan"]:
        raw["train"]["betas"] = [float("nan")]
    with pytest.raises(ParamsError) as e:
        (load_presets if "presets" in raw else load_params)(write(tmp_path, raw))
    assert f"'{key}'" in str(e.value)


def test_fractional_beta_and_defaults(tmp_path):
    p = load_params(write(tmp_path, {"train": {"betas": [0.5, 2]}}))
    assert p.train.betas == (0.5, 2.0)
    assert p.model.latent_dim == Params().model.latent_dim  # unspecified keys take the dataclass defaults


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_from_dict_reads_scientific_strings():
    # YAML 1.1 reads "2e-3" (no dot) as a string; it must still be a number.
    assert from_dict(Params, {"train": {"lr": "2e-3"}}).train.lr == pytest.approx(0.002)


def test_presets_override_model_and_train_only(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(
        {"model": {"latent_dim": 32, "res_blocks": 2}, "train": {"epochs": 9, "betas": [1, 5]},
         "evaluate": {"n_samples": 77},
         "presets": {"small": {"description": "d", "model": {"latent_dim": 8}, "train": {"epochs": 2}}, "same": {}}},
        sort_keys=False))
    presets = load_presets(path)
    assert list(presets) == ["small", "same"]  # file order: the order of the report's ablation table
    description, (small,) = presets["small"]
    assert description == "d"
    assert (small.model.latent_dim, small.model.res_blocks, small.train.epochs) == (8, 2, 2)  # the rest inherited
    assert small.train.betas == (1.0, 5.0) and small.evaluate.n_samples == 77
    assert presets["same"][1] == [load_params(path)]
    assert load_presets(write(tmp_path, {})) == {}


def test_a_preset_may_set_seeds_and_the_subset(tmp_path):
    path = write(tmp_path, {"data": {"subset": 0},
                            "presets": {"spread": {"seeds": [3, 4], "data": {"subset": 500}}}})
    _, runs = load_presets(path)["spread"]
    assert [(p.seed, p.data.subset) for p in runs] == [(3, 500), (4, 500)]
    for bad, key in (({"seeds": [1, 1]}, "presets.spread.seeds"), ({"seeds": [-1]}, "presets.spread.seeds"),
                     ({"data": {"root": "x"}}, "presets.spread.data")):
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            load_presets(write(tmp_path, {"presets": {"spread": bad}}))


def test_shipped_baseline_preset_is_the_plain_vae():
    """The guide's plain VAE: z = 128, global-sigma Gaussian decoder, no residual blocks and every other model option
    off, bf16, 6 epochs, same betas as the default run (its parameter count: tests/test_model_loss.py)."""
    description, (base,) = load_presets(REPO / "params.yaml")["baseline"]
    assert (base.model.latent_dim, base.model.likelihood, base.model.res_blocks) == (128, "gaussian", 0)
    assert (base.train.epochs, base.train.bf16, base.train.mmd_weight, base.train.ema_decay) == (6, True, 0.0, 0.0)
    assert base.train.kl_warmup_epochs == 0 and base.train.betas == load_params(REPO / "params.yaml").train.betas
    m = base.model
    assert (m.prior_flows, m.upsample, m.decoder_res_blocks, m.decoder_widths, m.sigma) == (
        0, "transposed", 0, (), "global")
    assert "plain" in description
