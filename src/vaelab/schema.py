"""Typed, frozen dataclasses built from YAML mappings: unknown keys and wrong types are rejected by key name."""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ParamsError(ValueError):
    """A params.yaml key is unknown, missing or has an invalid value; the message names the key."""


def check(ok: bool, key: str, reason: str) -> None:
    """Raise ParamsError naming `key` unless `ok`."""
    if not ok:
        raise ParamsError(f"params: '{key}' {reason}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ParamsError(f"params: '{key}' must be a mapping, got {type(value).__name__}")
        try:
            return from_dict(tp, value, prefix=f"{key}.")
        except ParamsError as e:  # a config shared by several sections names the one that failed
            raise ParamsError(str(e).replace("{section}", key)) from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params: '{key}' must be a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    # bool is an int subclass in Python: reject it where a number is expected, and vice versa.
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads "2e-3" (no dot) as a string
                value = float(value)
            except ValueError:
                raise ParamsError(f"params: '{key}' must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params: '{key}' must be a number, got {value!r}")
        if math.isnan(value):
            raise ParamsError(f"params: '{key}' must be a number, got NaN")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"params: '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp} for {key}")  # a bug in this module, not user input


def from_dict(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by key name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ParamsError(f"params: unknown key '{prefix}{key}' (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in raw.items()}
    return cls(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing file or invalid YAML raises ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params: file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"params: {path} is not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ParamsError(f"params: {path} must hold a mapping at the top level")
    return dict(raw)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys ({'a': {'b': 1}} -> {'a.b': 1})."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
