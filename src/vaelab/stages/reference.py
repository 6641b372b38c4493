"""DVC stage `reference`: real images scored exactly like samples by the judge and the audit network, the floor
of FCD and KID and the ceiling of the confidence for images a scorer has seen (metrics/reference.json). Its own
stage, reading the `evaluate` section, so that evaluation settings never retrain a classifier."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from vaelab import classifier, data, layout, network, quality, storage
from vaelab.stages import runtime


def main() -> int:
    params = runtime.load("reference")
    runtime.set_threads(params.train.threads)
    device, ev = runtime.device(), params.evaluate
    ds = data.load(Path(params.data.root) / layout.BATCHES, params.data.subset, params.seed)
    g = torch.Generator().manual_seed(params.seed)
    real = ds.train_x[torch.randperm(len(ds.train_x), generator=g)[: ev.n_samples]]  # the same images for both
    out: dict = {"n_real": len(real), "n_test": len(ds.test_x)}
    for role in ("judge", "audit"):
        net, cfg = network.load(layout.CLASSIFIERS[role].model, device)
        test_feats, _ = classifier.predict(net, ds.test_x, device, bf16=cfg.bf16)
        real_feats, real_probs = classifier.predict(net, real, device, bf16=cfg.bf16)
        row = quality.sample_quality(real_feats, real_probs, test_feats, ev.kid_subsets, ev.kid_subset_size,
                                     params.seed)
        out[role] = {f"real_{k}": v for k, v in row.items()}
        print(f"reference: {role}: {len(real)} real training images against the test images: fcd "
              f"{row['fcd']:.3f}, kid {row['kid']:.5f}, confidence {row['judge_confidence']:.3f}")
    storage.write_json(layout.REFERENCE, out)
    return runtime.finish("reference", 0)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
