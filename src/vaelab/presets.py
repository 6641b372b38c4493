"""The named recipes of params.yaml's `presets:` section, validated against the dataclasses of vaelab.params."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from vaelab.params import Params, ParamsError, from_dict, read_yaml

# What a preset may override: the model and its training recipe, the training subset, and the seeds it runs with
# (one model per seed and beta: the seed-to-seed spread). Evaluation, judge and sampler stay those of the default
# run, so a preset's numbers compare with the default's.
PRESET_KEYS = ("description", "model", "train", "data", "seeds")


def _presets(raw: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, tuple[str, list[Params]]]:
    """Validate the `presets` section: name -> (description, the default params with the preset's overrides, one
    per seed)."""
    section = raw.get("presets") or {}
    if not isinstance(section, Mapping):
        raise ParamsError("params: 'presets' must be a mapping of preset name -> overrides")
    out = {}
    for name, preset in section.items():
        key = f"presets.{name}"
        if not isinstance(name, str) or re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", name) is None:
            raise ParamsError(f"params: '{key}' must be named with lowercase letters, digits, '_' or '-'")
        if not isinstance(preset, Mapping):
            raise ParamsError(f"params: '{key}' must be a mapping with keys {', '.join(PRESET_KEYS)}")
        for k in preset:
            if k not in PRESET_KEYS:
                raise ParamsError(f"params: unknown key '{key}.{k}' (allowed: {', '.join(PRESET_KEYS)})")
        description = preset.get("description", "")
        if not isinstance(description, str):
            raise ParamsError(f"params: '{key}.description' must be a string")
        merged = dict(base)
        seeds = preset.get("seeds", [base.get("seed", 0)])
        if not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds):
            raise ParamsError(f"params: '{key}.seeds' must be a non-empty list of distinct seeds")
        for seed in seeds:
            try:
                from_dict(Params, {"seed": seed})
            except ParamsError as e:
                raise ParamsError(str(e).replace("'seed'", f"'{key}.seeds'", 1)) from None
        data_over = preset.get("data") or {}
        if not isinstance(data_over, Mapping) or set(data_over) - {"subset"}:
            raise ParamsError(f"params: '{key}.data' may set only 'subset'")
        merged["data"] = {**(base.get("data") or {}), **data_over}
        for section_name in ("model", "train"):
            overrides = preset.get(section_name) or {}
            if not isinstance(overrides, Mapping):
                raise ParamsError(f"params: '{key}.{section_name}' must be a mapping")
            try:  # checked alone first, so that an error names the preset's key
                from_dict(Params, {section_name: {**(base.get(section_name) or {}), **overrides}})
            except ParamsError as e:
                raise ParamsError(str(e).replace("'", f"'{key}.", 1)) from None
            merged[section_name] = {**(base.get(section_name) or {}), **overrides}
        out[name] = (description, [from_dict(Params, {**merged, "seed": seed}) for seed in seeds])
    return out


def load_presets(path: str | Path = "params.yaml") -> dict[str, tuple[str, list[Params]]]:
    """The named recipes of params.yaml's `presets` section, in file order: name -> (description, params per
    seed)."""
    raw = read_yaml(path)
    return _presets(raw, {k: v for k, v in raw.items() if k != "presets"})
