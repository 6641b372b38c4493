"""DVC stages `judge`, `audit` and `features`: train one CIFAR-10 classifier (the params section named by --role),
save it and its test accuracy. What it scores is measured by stage `reference` and `evaluate@<β>`, so evaluation
settings never retrain a classifier."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from vaelab import data, layout, storage, tracking
from vaelab.classifier import accuracy, predict, train_classifier
from vaelab.precision import count_parameters, precision_name
from vaelab.params import flatten, to_dict
from vaelab.stages import runtime

PURPOSE = {
    "judge": "its features and softmax score the VAE samples; it never trains anything",
    "audit": "a second scorer of the VAE samples, of another architecture; it never trains anything",
    "features": "its activations define the perceptual term of the VAE's loss; it never scores anything",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", required=True, choices=list(layout.CLASSIFIERS))
    role = parser.parse_args(argv).role
    params = runtime.load(role)
    runtime.set_threads(params.train.threads)
    device = runtime.device()
    cfg, paths = getattr(params, role), layout.CLASSIFIERS[role]
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    try:
        tracking.prepare_store(uri, params.tracking.judge_experiment)  # fail fast, before training
    except tracking.TrackingError as e:
        print(f"{role}: {e}", file=sys.stderr)
        return 1
    ds = data.load(Path(params.data.root) / layout.BATCHES, params.data.subset, params.seed)
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        print(f"{role}: epoch {row['epoch']}: loss {row['train_loss']:.3f}, test accuracy "
              f"{row['test_accuracy']:.4f} ({row['epoch_seconds']:.0f} s)")

    tags = {"dvc_stage": role, "git_commit": tracking.git_commit(root), "role": role}
    description = (f"CIFAR-10 {role} classifier ({cfg.arch}, widths {list(cfg.widths)}, seed {cfg.seed}), "
                   f"{cfg.epochs:g} epochs on {len(ds.train_x)} images; {PURPOSE[role]}")
    print(f"{role}: training {cfg.arch} on {device}, {len(ds.train_x)} images, MLflow {uri} "
          f"({params.tracking.judge_experiment})")
    with tracking.run(uri, params.tracking.judge_experiment, role, tags=tags, description=description) as run_id:
        tracking.log_params(flatten({role: to_dict(cfg), "seed": params.seed, "data": {"subset": params.data.subset}}))
        t0 = time.perf_counter()
        model = train_classifier(ds.train_x, ds.train_y, cfg, device, on_epoch, test=(ds.test_x, ds.test_y))
        train_seconds = time.perf_counter() - t0
        _, test_probs = predict(model, ds.test_x, device, bf16=cfg.bf16)
        summary = {
            "test_accuracy": accuracy(test_probs, ds.test_y),
            "train_seconds": train_seconds,
            "epochs": cfg.epochs,
            "parameters": count_parameters(model),
            "precision": precision_name(device, cfg.bf16),  # cfg.bf16 where the hardware computes bf16
            "n_train": len(ds.train_x),
            "n_test": len(ds.test_x),
        }
        # Mean max-softmax on the real test images (flip-averaged, as every scored set): how sure this network is
        # where it is right 100 * test_accuracy % of the time.
        summary["test_confidence"] = float(test_probs.max(1).values.mean())
        storage.save_model(paths.model, model, {"role": role, "classifier": to_dict(cfg), "seed": params.seed})
        storage.write_text(paths.history, pd.DataFrame(rows).to_csv(index=False))
        storage.write_json(paths.metrics, summary)
        tracking.log_metrics(summary, step=len(rows))  # at the last epoch, like the per-epoch charts
        model_uri = tracking.log_model(model, (3, 32, 32), name=role)
        storage.write_json(paths.run_file, {"run_id": run_id, "tracking_uri": uri, "model_uri": model_uri,
                                            "experiment": params.tracking.judge_experiment})
    print(f"{role}: test accuracy {summary['test_accuracy']:.4f}, confidence {summary['test_confidence']:.3f}, after "
          f"{train_seconds:.0f} s of training")
    return runtime.finish(role, 0)


if __name__ == "__main__":
    sys.exit(main())
