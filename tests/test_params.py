"""params.yaml: the shipped file is valid, and bad values are rejected naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vaelab.params import Params, ParamsError, from_dict, load_params

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
        ({"sampling": {"temperature": 0}}, "sampling.temperature"),
        ({"sampling": {"temperature": float("nan")}}, "sampling.temperature"),
        ({"sampling": {"gmm_components": 0}}, "sampling.gmm_components"),
        ({"sampling": {"gmm_iterations": 0}}, "sampling.gmm_iterations"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, raw, key):
    if raw.get("train", {}).get("betas") == [".nan"]:
        raw["train"]["betas"] = [float("nan")]
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, raw))
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
