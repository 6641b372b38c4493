"""DVC stage `judge`: train the CIFAR-10 classifier that scores samples, and the real-image reference row."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vaelab import data, quality, storage, tracking
from vaelab.judge import accuracy, predict, train_judge
from vaelab.precision import count_parameters
from vaelab.params import ParamsError, flatten, load_params, to_dict
from vaelab.stages import layout


def main() -> int:
    try:
        params = load_params(layout.PARAMS_FILE)
    except ParamsError as e:
        print(f"judge: {e}", file=sys.stderr)
        return 2
    layout.set_threads(params.train.threads)
    device = layout.device()
    cfg, ev = params.judge, params.evaluate
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    try:
        tracking.prepare_store(uri, params.tracking.judge_experiment)  # fail fast, before training
    except tracking.TrackingError as e:
        print(f"judge: {e}", file=sys.stderr)
        return 1
    ds = data.load(Path(params.data.root) / layout.BATCHES, params.data.subset, params.seed)
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        print(f"judge: epoch {row['epoch']}: loss {row['train_loss']:.3f}, test accuracy "
              f"{row['test_accuracy']:.4f} ({row['epoch_seconds']:.0f} s)")

    tags = {"dvc_stage": "judge", "git_commit": tracking.git_commit(root), "role": "judge"}
    description = (f"CIFAR-10 judge classifier, widths {list(cfg.widths)}, {cfg.epochs:g} epochs on "
                   f"{len(ds.train_x)} images; its features and softmax score the VAE samples")
    print(f"judge: training on {device}, {len(ds.train_x)} images, MLflow {uri} ({params.tracking.judge_experiment})")
    with tracking.run(uri, params.tracking.judge_experiment, "judge", tags=tags, description=description) as run_id:
        tracking.log_params(flatten({"judge": to_dict(cfg), "seed": params.seed, "data": {"subset": params.data.subset}}))
        t0 = time.perf_counter()
        model = train_judge(ds.train_x, ds.train_y, cfg, params.seed, device, on_epoch, test=(ds.test_x, ds.test_y))
        train_seconds = time.perf_counter() - t0
        test_feats, test_probs = predict(model, ds.test_x, device, bf16=cfg.bf16)
        # Reference row: real training images scored exactly like samples (the floor of fcd / kid and the
        # ceiling of judge_confidence for images the judge has seen).
        g = torch.Generator().manual_seed(params.seed)
        real = ds.train_x[torch.randperm(len(ds.train_x), generator=g)[: ev.n_samples]]
        real_feats, real_probs = predict(model, real, device, bf16=cfg.bf16)
        reference = quality.sample_quality(real_feats, real_probs, test_feats, ev.kid_subsets, ev.kid_subset_size,
                                           params.seed)
        summary = {
            "test_accuracy": accuracy(test_probs, ds.test_y),
            "train_seconds": train_seconds,
            "epochs": cfg.epochs,
            "parameters": count_parameters(model),
            "n_train": len(ds.train_x),
            "n_test": len(ds.test_x),
            "test_judge_confidence": float(test_probs.max(1).values.mean()),
            **{f"real_{k}": v for k, v in reference.items()},
            "n_real": len(real),
        }
        storage.save_model(layout.JUDGE_MODEL, model, {"judge": to_dict(cfg), "seed": params.seed})
        storage.write_text(layout.JUDGE_HISTORY, pd.DataFrame(rows).to_csv(index=False))
        storage.write_json(layout.JUDGE_METRICS, summary)
        tracking.log_metrics(summary, step=len(rows))  # at the last epoch, like the per-epoch charts
        model_uri = tracking.log_model(model, (3, 32, 32), name="judge")
        storage.write_json(layout.JUDGE_RUN, {"run_id": run_id, "tracking_uri": uri, "model_uri": model_uri,
                                              "experiment": params.tracking.judge_experiment})
    print(f"judge: test accuracy {summary['test_accuracy']:.4f} after {train_seconds:.0f} s of training; "
          f"real train vs test images: fcd {reference['fcd']:.3f}, kid {reference['kid']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
