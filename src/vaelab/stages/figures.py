"""DVC stage `figures@<beta>`: training curves, prior samples, interpolations, reconstructions, traversals."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from vaelab import data, plots, storage, tracking
from vaelab.params import ParamsError, load_params
from vaelab.stages import layout


def main(argv: list[str] | None = None) -> int:
    try:
        params = load_params(layout.PARAMS_FILE)
        beta, paths = layout.beta_arg(argv, params, __doc__)
    except ParamsError as e:
        print(f"figures: {e}", file=sys.stderr)
        return 2
    layout.set_threads(params.train.threads)
    device = layout.device()
    model, config = storage.load_model(paths.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    history = pd.read_csv(paths.history)
    kl_dims = pd.read_csv(paths.kl_per_dim)["kl_nats"].tolist()
    figs = plots.make_figures(model, ds, history, kl_dims, beta, params.figures, params.seed, device)
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
