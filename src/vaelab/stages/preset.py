"""`python -m vaelab.stages.preset NAME`: run one recipe of params.yaml's `presets` section, outside dvc.yaml.

Presets are what the default run is compared with (the `baseline` plain VAE, the ablation steps, and the
multi-seed run that measures the seed-to-seed spread), so they are kept out of the DAG: `dvc repro` never pays for
them. For each seed and beta of the preset this trains a model into presets/NAME/ (the train stage's code:
checkpoints, MLflow run `NAME/beta=B`), fine-tunes its decoder (the decoder stage's code), fits its sampler (registry alias `NAME-beta-B`), evaluates it with the
default pipeline's judge and evaluation (the evaluate stage's code), and finally writes reports/presets/NAME.json,
the small git-tracked file the report stage reads. Needs the default pipeline's `download`, `judge`, `audit`
and `features` outputs (`dvc repro judge audit features`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vaelab import layout, metrics, plots, storage, tracking
from vaelab.model import load_model
from vaelab.params import ParamsError, load_params, to_dict
from vaelab.presets import load_presets
from vaelab.stages import decoder, evaluate, runtime, sampler, train


def save_prior_grid(model_file: Path, params, out: Path) -> None:
    """The figures stage's prior grid for a preset's model: the same seeded codes z ~ N(0, I) as every default
    model decodes, so the report can put the two grids side by side."""
    model, _ = load_model(model_file, runtime.device())
    n = params.figures.grid_size**2
    z = torch.randn(n, model.cfg.latent_dim, generator=torch.Generator().manual_seed(params.seed))
    with torch.no_grad():
        fig = plots.image_grid(metrics.sample_uint8(model, z), params.figures.grid_size, "")
    with storage.atomic_path(out) as tmp:
        plots.save(fig, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a preset listed in params.yaml `presets`")
    args = parser.parse_args(argv)
    try:
        load_params(layout.PARAMS_FILE)
        presets = load_presets(layout.PARAMS_FILE)
    except ParamsError as e:
        print(f"preset: {e}", file=sys.stderr)
        return 2
    if args.name not in presets:
        print(f"preset: no preset {args.name!r} in {layout.PARAMS_FILE} (presets: {', '.join(presets) or 'none'})",
              file=sys.stderr)
        return 2
    description, per_seed = presets[args.name]
    first = per_seed[0]
    batches = Path(first.data.root) / layout.BATCHES
    for need, stage in ((batches, "download"), *((c.model, c.role) for c in layout.CLASSIFIERS.values())):
        if not need.exists():
            print(f"preset: {need} is missing; run `dvc repro {stage}` first (a preset is trained with the default "
                  f"pipeline's feature network and judged by its judge and audit)", file=sys.stderr)
            return 2
    if first.train.processes > 1:
        print(f"preset: {args.name} sets train.processes = {first.train.processes}; presets train in this one "
              f"process (use the pipeline's train stage, or `dvc exp run`, for torchrun)", file=sys.stderr)
        return 2
    runtime.set_threads(first.train.threads)
    rows = []
    for params in per_seed:
        # One seed keeps the layout presets/NAME/...; several get a folder each.
        root = Path("presets") / args.name / (f"seed_{params.seed}" if len(per_seed) > 1 else "")
        name = args.name if len(per_seed) == 1 else f"{args.name}-seed-{params.seed}"
        for beta in params.train.betas:
            paths = layout.BetaPaths(f"{beta:g}", root)
            print(f"preset {args.name}: seed {params.seed}, β = {beta:g} -> {root}")
            for step in (lambda: train.run(params, beta, paths, preset=name),
                         lambda: decoder.run(params, beta, paths, preset=name),
                         lambda: sampler.run(params, beta, paths, preset=name),
                         lambda: evaluate.run(params, beta, paths)):
                status = step()
                if status != 0:
                    return status
            row = {"beta": beta, "seed": params.seed, "train": storage.read_json(paths.train_metrics),
                   "eval": storage.read_json(paths.eval_metrics)}
            if len(per_seed) == 1:
                grid = layout.PRESET_RESULTS / f"{args.name}_beta_{paths.tag}.png"
                save_prior_grid(paths.tuned_model, params, grid)
                row["prior_samples"] = grid.name
            rows.append(row)
    out = {
        "preset": args.name,
        "description": description,
        "model": to_dict(first.model),
        "train": to_dict(first.train),
        "decoder": to_dict(first.decoder),  # every model's decoder was fine-tuned with it (decoder@β's code)
        "data": {"subset": first.data.subset},
        "seeds": [p.seed for p in per_seed],
        "git_commit": tracking.git_commit(layout.repo_root()),
        # The evaluation it was measured with: the report flags a preset judged by another judge.
        "judge_md5": storage.weights_md5(layout.JUDGE.model),
        "audit_md5": storage.weights_md5(layout.AUDIT.model),
        "features_md5": storage.weights_md5(layout.FEATURES.model),
        "betas": rows,
    }
    storage.write_json(layout.preset_results_file(args.name), out)
    print(f"preset {args.name}: wrote {layout.preset_results_file(args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
