"""DVC stage `figures@<beta>`: training curves, samples from N(0, I) and from the ex-post sampler, interpolations
(between test images, between sampler draws of two judge classes), reconstructions, traversals, factor
responses."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from vaelab import classifier, data, layout, network, plots, samplers, storage, tracking
from vaelab.model import load_model
from vaelab.stages import runtime
from vaelab.stages.sampler import load_sampler


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("figures", argv, __doc__)
    device = runtime.device()
    # The encoder as trained with the decoder of decoder@<beta>: what the sampler was fitted with.
    model, config = load_model(paths.tuned_model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    history, steps = pd.read_csv(paths.history), pd.read_csv(paths.steps)
    kl_dims = pd.read_csv(paths.kl_per_dim)["kl_nats"].tolist()
    response = pd.read_csv(paths.factor_response)
    try:  # the sampler that sampler@<beta> fitted and evaluate@<beta> judged
        sampler = load_sampler(paths, params)
    except samplers.StaleSamplerError as e:
        print(f"figures: {e}", file=sys.stderr)
        return 2
    # The judge labels sampler draws for the interpolation between classes (it scores images, it trains nothing).
    judge, judge_cfg = network.load(layout.JUDGE.model, device)

    def classify(images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            probs = classifier.predict(judge, images_u8, device, bf16=judge_cfg.bf16)[1]
        return probs.argmax(1), probs.max(1).values

    trained = config["train"]
    figs = plots.make_figures(model, ds, history, steps, kl_dims, response, beta, trained["perceptual_weight"],
                              trained["mmd_weight"], params.figures, lambda n, g: samplers.draw(sampler, n, g),
                              samplers.describe(sampler), classify, params.seed, device)
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
