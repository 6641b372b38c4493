"""DVC stage `figures@<beta>`: training curves, prior samples, interpolations, reconstructions, traversals,
factor responses."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from vaelab import data, density, plots, storage, tracking
from vaelab.stages import layout


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = layout.beta_stage("figures", argv, __doc__)
    device = layout.device()
    model, config = storage.load_model(paths.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    history = pd.read_csv(paths.history)
    kl_dims = pd.read_csv(paths.kl_per_dim)["kl_nats"].tolist()
    response = pd.read_csv(paths.factor_response)
    # The mixture evaluate@<beta> fitted and judged, so the grid shows the judged sampler (and it is fitted once).
    state, settings = storage.load_state(paths.mixture)
    gmm = density.GaussianMixture(**state)
    expected = {**layout.mixture_settings(params), "model_md5": storage.weights_md5(paths.model)}
    if settings != expected:
        print(f"figures: {paths.mixture} was fitted with {settings}, not with params.yaml's settings to "
              f"{paths.model}: {expected}; run `dvc repro evaluate@{paths.tag}` first", file=sys.stderr)
        return 2
    figs = plots.make_figures(model, ds, history, kl_dims, response, beta, params.figures, params.sampling, gmm,
                              params.seed, device)
    paths.figures.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        out = paths.figures / f"{name}.png"
        with storage.atomic_path(out) as tmp:
            plots.save(fig, tmp)
        written.append(out)
    run = storage.read_json(paths.run_file)
    with tracking.run(run["tracking_uri"], run["experiment"], f"beta={beta:g}", run_id=run["run_id"]):
        for out in written:
            tracking.log_artifact(out, "figures")
    print(f"figures: β = {beta:g}: wrote {len(written)} figures to {paths.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
