"""DVC stage `evaluate@<beta>`: test-set metrics of one model, as DVC metrics and in its MLflow run."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from vaelab import data, storage, tracking
from vaelab.metrics import evaluate
from vaelab.params import ParamsError, load_params
from vaelab.stages import layout


def main(argv: list[str] | None = None) -> int:
    try:
        params = load_params(layout.PARAMS_FILE)
        beta, paths = layout.beta_arg(argv, params, __doc__)
    except ParamsError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    layout.set_threads(params.train.threads)
    device = layout.device()
    model, config = storage.load_model(paths.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    metrics, kl_dims = evaluate(model, ds.test_x, device, params.evaluate.batch_size,
                                params.evaluate.active_threshold, bf16=config["train"]["bf16"], seed=params.seed)
    metrics = {"beta": beta, **metrics}
    storage.write_json(paths.eval_metrics, metrics)
    kl = pd.DataFrame({"dim": range(len(kl_dims)), "kl_nats": kl_dims})
    storage.write_text(paths.kl_per_dim, kl.to_csv(index=False))
    run = storage.read_json(paths.run_file)
    with tracking.run(run["tracking_uri"], run["experiment"], f"beta={beta:g}", run_id=run["run_id"]):
        # At the last epoch's step: the per-epoch charts end on the definitive test-set numbers.
        tracking.log_metrics({k: v for k, v in metrics.items() if k != "beta"}, step=config["train"]["epochs"])
        tracking.log_artifact(paths.kl_per_dim)
    print(f"evaluate: β = {beta:g}: {metrics['test_bpd']:.3f} bits/dim, PSNR {metrics['test_psnr']:.2f} dB, "
          f"KL {metrics['rate_nats']:.1f} nats, {metrics['active_units']} active units")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
