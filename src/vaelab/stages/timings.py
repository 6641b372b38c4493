"""DVC stage `timings`: sum the stage times of this run (metrics/timings/<stage>.json) with the train benchmark
measured now, into metrics/timings.json and docs/performance.md."""
from __future__ import annotations

import sys

from vaelab import layout, speed, storage, timings
from vaelab.params import Params
from vaelab.stages import runtime


def listed(stage: str, params: Params) -> bool:
    """Whether a stage time belongs to this run: every stage without an item, and the per-β ones of the betas (and
    seeds) listed now only: train.betas, sweep.betas, sweep.spread_betas x spread_seeds, control.betas x
    control.seeds (a removed value's file stays behind, as its metrics do)."""
    name, at, tag = stage.partition("@")
    if not at:
        return True
    if name == "control":  # control@<beta>-<seed>
        beta, _, seed = tag.rpartition("-")
        return float(beta) in params.control.betas and int(seed) in params.control.seeds
    if name.startswith("sweep_seed"):  # sweep_seed@<beta>-<seed>, sweep_seed_eval@<beta>-<seed>
        beta, _, seed = tag.rpartition("-")
        return float(beta) in params.sweep.spread_betas and int(seed) in params.sweep.spread_seeds
    return float(tag) in (params.sweep.betas if name.startswith("sweep") else params.train.betas)


def main() -> int:
    params = runtime.load("timings")
    runtime.set_threads(params.train.threads)
    stages = {p.stem: storage.read_json(p)["seconds"] for p in sorted(layout.TIMINGS_DIR.glob("*.json"))
              if listed(p.stem, params)}
    if not stages:
        print(f"timings: no stage times under {layout.TIMINGS_DIR}: run the pipeline (dvc repro)", file=sys.stderr)
        return 1
    bs, bf16, t = params.train.batch_size, params.train.bf16, params.timings
    throughput = speed.throughput(params, bs, t.benchmark_steps, t.benchmark_warmup, bf16)
    profile = speed.profile_step(params, bs, t.profile_steps, bf16)
    stages["timings"] = runtime.process_seconds()  # this stage's own time, all but the writing below
    summary = timings.summarise(stages, throughput, profile)
    storage.write_json(layout.TIMINGS, summary)
    storage.write_text(layout.PERFORMANCE_DOC, timings.markdown(summary, bs))
    print(f"timings: {len(stages)} stages, {summary['total_seconds'] / 60:.1f} min in all; benchmark "
          f"{summary['benchmark_images_per_second']:.0f} images/s ({summary['machine_class']} class)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
