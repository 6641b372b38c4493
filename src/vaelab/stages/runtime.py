"""The opening and closing of every stage: read params.yaml, parse `--beta`, pick the device and the thread count,
and write the stage's own wall time (metrics/timings/<stage>.json)."""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

import torch

from vaelab import layout, storage
from vaelab.layout import BetaPaths, SweepPaths
from vaelab.params import ParamsError, Params, load_params


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc, so the imports count too; else since this import)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(open("/proc/uptime").read().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def finish(stage: str, status: int) -> int:
    """Write the wall time of this stage's process (seconds, imports included) to layout.timing_file(stage) if
    it succeeded (status 0; under torchrun rank 0 only); return the status."""
    if status == 0 and os.environ.get("RANK", "0") == "0":
        storage.write_json(layout.timing_file(stage), {"stage": stage, "seconds": round(process_seconds(), 1)})
    return status


def load(name: str) -> Params:
    """params.yaml, or exit with status 2 and a message naming the bad key."""
    try:
        return load_params(layout.PARAMS_FILE)
    except ParamsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def listed_beta(text: str, listed: tuple[float, ...], key: str) -> float:
    """The beta of a `--beta` argument, checked to be listed in params.yaml's `key`; ParamsError otherwise."""
    try:
        beta = float(text)
    except ValueError:
        raise ParamsError(f"--beta must be a number, got {text!r}") from None
    if not math.isfinite(beta) or beta not in listed:
        raise ParamsError(f"--beta {text} is not listed in params.yaml {key} {list(listed)}")
    return beta


def _listed(params: Params, key: str) -> tuple:
    """The value of a dotted params key (sweep.betas)."""
    return functools.reduce(getattr, key.split("."), params)


def point_arg(argv: list[str] | None, params: Params, description: str, key: str, seeds_key: str | None = None,
              seed_required: bool = False) -> tuple[float, str, int | None]:
    """Parse `--beta B` (the foreach or matrix item), listed in params.yaml's `key`, and with `seeds_key` a `--seed
    S` listed there (optional unless seed_required); return the beta, its tag as typed (as DVC prints it) and the
    seed (None when not given). ParamsError names the problem."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--beta", required=True, help=f"a value listed in params.yaml {key}")
    if seeds_key is not None:
        parser.add_argument("--seed", type=int, required=seed_required,
                            help=f"a value listed in params.yaml {seeds_key}")
    args = parser.parse_args(argv)
    beta = listed_beta(args.beta, _listed(params, key), key)
    seed = getattr(args, "seed", None)
    if seed is not None and seed not in _listed(params, seeds_key):
        raise ParamsError(f"--seed {seed} is not listed in params.yaml {seeds_key} {list(_listed(params, seeds_key))}")
    return beta, args.beta, seed


def beta_stage(name: str, argv: list[str] | None, description: str) -> tuple[Params, float, BetaPaths]:
    """The opening of every per-beta stage: read params.yaml, parse `--beta` (listed in train.betas), set the thread
    count. Bad params or a beta not listed exit with status 2 and a message naming the problem."""
    params = load(name)
    try:
        beta, tag, _ = point_arg(argv, params, description, "train.betas")
    except ParamsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    set_threads(params.train.threads)
    return params, beta, BetaPaths(tag)


def sweep_stage(name: str, argv: list[str] | None, description: str) -> tuple[Params, float, SweepPaths]:
    """The opening of a sweep point's stages: `--beta B` listed in sweep.betas, and for a point of the seed spread
    `--seed S` listed in sweep.spread_seeds with B in sweep.spread_betas; as beta_stage otherwise."""
    params = load(name)
    try:
        beta, tag, seed = point_arg(argv, params, description, "sweep.betas", "sweep.spread_seeds")
        if seed is not None and beta not in params.sweep.spread_betas:
            raise ParamsError(f"--seed is given, but --beta {tag} is not listed in params.yaml sweep.spread_betas "
                              f"{list(params.sweep.spread_betas)}")
        if seed == params.seed:
            raise ParamsError(f"params.yaml sweep.spread_seeds lists the top-level seed {seed}, with which every "
                              "sweep point is trained already: list other seeds")
    except ParamsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    set_threads(params.train.threads)
    return params, beta, SweepPaths(tag, seed)


def device() -> torch.device:
    """CUDA when present, else CPU (LOCAL_RANK picks the GPU under torchrun)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_threads(n: int) -> None:
    """Use n intra-op threads (0 = this machine's cores shared out over torchrun's processes on it)."""
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(n or max(1, per_process))
