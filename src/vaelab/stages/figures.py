"""DVC stage `figures@<beta>`: training curves, samples from N(0, I) and from the ex-post sampler, interpolations,
reconstructions, traversals, factor responses."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from vaelab import data, density, layout, plots, storage, tracking
from vaelab.model import load_model
from vaelab.stages import runtime
from vaelab.stages.sampler import load_sampler


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("figures", argv, __doc__)
    device = runtime.device()
    model, config = load_model(paths.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    history = pd.read_csv(paths.history)
    kl_dims = pd.read_csv(paths.kl_per_dim)["kl_nats"].tolist()
    response = pd.read_csv(paths.factor_response)
    try:  # the sampler that sampler@<beta> fitted and evaluate@<beta> judged
        gmm = load_sampler(paths, params)
    except density.StaleSamplerError as e:
        print(f"figures: {e}", file=sys.stderr)
        return 2
    figs = plots.make_figures(model, ds, history, kl_dims, response, beta, params.figures, gmm, params.seed, device)
    paths.figures.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        out = paths.figures / f"{name}.png"
        with storage.atomic_path(out) as tmp:
            plots.save(fig, tmp)
        written.append(out)
    run = storage.read_json(paths.run_file)
    with tracking.run(run["tracking_uri"], run["experiment"], run["run_name"], run_id=run["run_id"]):
        for out in written:
            tracking.log_artifact(out, "figures")
    print(f"figures: β = {beta:g}: wrote {len(written)} figures to {paths.figures}")
    return runtime.finish(f"figures@{paths.tag}", 0)


if __name__ == "__main__":
    sys.exit(main())
