"""`python -m vaelab.stages.preset NAME`: run one recipe of params.yaml's `presets` section, outside dvc.yaml.

Presets are what the default run is compared with (the `baseline` plain VAE, and the ablation steps between it and
the default), so they are kept out of the DAG: `dvc repro` never pays for them. For each beta of the preset this
trains a model into presets/NAME/ (the train stage's code: checkpoints, MLflow run `NAME/beta=B`, registry alias
`NAME-beta-B`), evaluates it with the default pipeline's judge and evaluation (the evaluate stage's code), and
finally writes reports/presets/NAME.json, the small git-tracked file the report stage reads for its baseline
column and ablation table. Needs the default pipeline's `download` and `judge` outputs (`dvc repro judge`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vaelab import metrics, plots, storage, tracking
from vaelab.params import ParamsError, load_params, load_presets, to_dict
from vaelab.stages import evaluate, layout, train


def save_prior_grid(model_file: Path, params, out: Path) -> None:
    """The figures stage's prior grid for a preset's model: the same seeded codes z ~ N(0, I) as every default
    model decodes, so the report can put the two grids side by side."""
    model, _ = storage.load_model(model_file, layout.device())
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
    description, params = presets[args.name]
    batches = Path(params.data.root) / layout.BATCHES
    for need, stage in ((batches, "download"), (layout.JUDGE_MODEL, "judge")):
        if not need.exists():
            print(f"preset: {need} is missing; run `dvc repro {stage}` first (a preset is judged by the default "
                  f"pipeline's judge)", file=sys.stderr)
            return 2
    layout.set_threads(params.train.threads)
    root = Path("presets") / args.name
    rows = []
    for beta in params.train.betas:
        paths = layout.BetaPaths(f"{beta:g}", root)
        print(f"preset {args.name}: β = {beta:g} -> {root}")
        for step in (lambda: train.run(params, beta, paths, preset=args.name),
                     lambda: evaluate.run(params, beta, paths)):
            status = step()
            if status != 0:
                return status
        grid = layout.PRESET_RESULTS / f"{args.name}_beta_{paths.tag}.png"
        save_prior_grid(paths.model, params, grid)
        rows.append({"beta": beta, "train": storage.read_json(paths.train_metrics),
                     "eval": storage.read_json(paths.eval_metrics), "prior_samples": grid.name})
    out = {
        "preset": args.name,
        "description": description,
        "model": to_dict(params.model),
        "train": to_dict(params.train),
        "git_commit": tracking.git_commit(layout.repo_root()),
        # The evaluation it was measured with: the report flags a preset judged by another judge.
        "judge_md5": storage.weights_md5(layout.JUDGE_MODEL),
        "betas": rows,
    }
    storage.write_json(layout.preset_results_file(args.name), out)
    print(f"preset {args.name}: wrote {layout.preset_results_file(args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
