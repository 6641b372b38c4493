"""The presets' results files (reports/presets/NAME.json) as rows, and how two recipes differ."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vaelab.params import AdversarialConfig, ModelConfig, TrainConfig


def preset_rows(preset: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per beta of a preset's results file (reports/presets/NAME.json): train and eval metrics joined."""
    rows = []
    for b in preset["betas"]:
        row = {**b["train"], **b["eval"], "beta": b["beta"], "seed": b.get("seed")}
        row["train_minutes"] = row["train_seconds"] / 60
        rows.append(row)
    return rows


def describe(preset: Mapping[str, Any]) -> str:
    """The main choices of a preset's recipe in one line, for a preset that has no description."""
    m, t = preset["model"], preset["train"]
    prior = f"flow prior ({m['prior_flows']} couplings)" if m.get("prior_flows") else "N(0, I) prior"
    return (f"z = {m['latent_dim']}, {prior}, {m['likelihood']}, {m['res_blocks']} res. blocks, {t['epochs']} epochs, "
            f"MMD weight {t['mmd_weight']:g}, EMA {t['ema_decay']:g}, KL warm-up {t['kl_warmup_epochs']:g} ep.")


def recipe_changes(recipe: Mapping[str, Mapping[str, Any]], preset: Mapping[str, Any]) -> list[str]:
    """`section.key = value` for every model / train / decoder key where `recipe` differs from a preset's (betas
    and threads left out: they do not change the model). A key missing from a preset's file (written before the key
    existed) counts as the code default, which is what that run used; a run without a `decoder` section (written
    before stage decoder@<β> existed) was decoded by its decoder as trained, which counts as a change of its own."""
    out = []
    if "decoder" in recipe and "decoder" not in preset:
        out.append("decoder fine-tuned (decoder@β)")
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("decoder", AdversarialConfig)):
        if section not in recipe or section not in preset:
            continue
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in recipe[section].items():
            theirs = preset[section].get(key, defaults.get(key))
            if isinstance(theirs, tuple):  # a code default; the files hold lists
                theirs = list(theirs)
            if key not in ("betas", "threads") and theirs != value:
                out.append(f"{section}.{key} = {value if not isinstance(value, float) else f'{value:g}'}")
    return out
