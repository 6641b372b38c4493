"""The opening and closing of every stage: read params.yaml, parse `--beta`, pick the device and the thread count,
and write the stage's own wall time (metrics/timings/<stage>.json)."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from vaelab import layout, storage
from vaelab.layout import BetaPaths
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


def beta_arg(argv: list[str] | None, params: Params, description: str) -> tuple[float, BetaPaths]:
    """Parse `--beta B` (the foreach item), check it is listed in train.betas, return it and its paths."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--beta", required=True, help="a value listed in params.yaml train.betas")
    args = parser.parse_args(argv)
    return listed_beta(args.beta, params.train.betas, "train.betas"), BetaPaths(args.beta)


def beta_stage(name: str, argv: list[str] | None, description: str) -> tuple[Params, float, BetaPaths]:
    """The opening of every per-beta stage: read params.yaml, parse `--beta`, set the thread count.
    Bad params or a beta not listed exit with status 2 and a message naming the problem."""
    params = load(name)
    try:
        beta, paths = beta_arg(argv, params, description)
    except ParamsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    set_threads(params.train.threads)
    return params, beta, paths


def device() -> torch.device:
    """CUDA when present, else CPU (LOCAL_RANK picks the GPU under torchrun)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_threads(n: int) -> None:
    """Use n intra-op threads (0 = this machine's cores shared out over torchrun's processes on it)."""
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(n or max(1, per_process))
