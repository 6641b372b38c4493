"""Does the patch adversarial term sharpen a trained decoder? Fine-tune one VAE's decoder (encoder frozen, so its
codes and the β analysis stay as trained) with `vaelab.adversarial.finetune` twice from the same weights: with
disc_weight 0 (the same steps on the reconstruction term alone: the control) and with the adversarial term. Each
decoder, and the model as trained, is scored on the reconstructions of n test images (PSNR, judge FCD, accuracy,
sharpness) and on the same n codes drawn from a mixture fitted to the training codes (judge FCD, confidence, class
entropy, sharpness). A probe for issue 27's fine-tune, outside the DAG (needs the judge: `dvc repro judge`):

    python scripts/finetune_probe.py models/sweep/beta_1/model.pt --steps 1000 --n 5000

Each --set overrides keys of vaelab.params.AdversarialConfig (default: its dataclass defaults, steps and batch
size from the flags).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import torch
import yaml

from vaelab import adversarial, classifier, data, density, layout, metrics, network, quality
from vaelab.intervals import mean_interval
from vaelab.model import load_model
from vaelab.params import AdversarialConfig, from_dict, load_params


def psnr_per_image(a_u8: torch.Tensor, b_u8: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image pair (N,) on the [0, 1] scale."""
    mse = ((a_u8.double() - b_u8.double()) / 255).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model file saved by a train, sweep or preset stage")
    parser.add_argument("--steps", type=int, default=1000, help="fine-tune steps of each decoder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=5000, help="test images and sampler codes scored per decoder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of AdversarialConfig (repeatable), e.g. disc_start=250")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = load_params()
    device = torch.device("cpu")
    model, config = load_model(args.model, device)
    bf16 = config["train"]["bf16"]
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = from_dict(AdversarialConfig, {"steps": args.steps, "batch_size": args.batch_size,
                                        "disc_start": args.steps // 4} | overrides)
    ds = data.load(Path(params.data.root) / layout.BATCHES)
    judge, judge_cfg = network.load(layout.CLASSIFIERS["judge"].model, device)
    test_x, test_y = ds.test_x[:args.n], ds.test_y[:args.n]
    with torch.no_grad():
        ref, _ = classifier.predict(judge, ds.test_x, device, bf16=judge_cfg.bf16)
        real_energy = quality.high_frequency_energy(ds.test_x)
        test_mu, _ = metrics.encode(model, test_x, device, 500, bf16)
        train_mu, _ = metrics.encode(model, ds.train_x[:20000], device, 500, bf16)
        gmm = density.fit_gmm(train_mu, params.sampling.gmm_components, params.sampling.gmm_iterations, args.seed)
        drawn = density.sample(gmm, args.n, torch.Generator().manual_seed(args.seed + 1))

    def score(name: str, decoder_model) -> None:
        """One row: the reconstructions and the sampler images of this decoder."""
        with torch.no_grad():
            recon = torch.cat([metrics.decode_uint8(decoder_model, z) for z in test_mu.split(500)])
            samples = torch.cat([metrics.decode_uint8(decoder_model, z) for z in drawn.split(500)])
            psnr, psnr_ci = mean_interval(psnr_per_image(recon, test_x), 200, args.seed)
            rf, rp = classifier.predict(judge, recon, device, bf16=judge_cfg.bf16)
            sf, sp = classifier.predict(judge, samples, device, bf16=judge_cfg.bf16)
        r = quality.sample_quality(rf, rp, ref, 50, 1000, args.seed, 100)
        s = quality.sample_quality(sf, sp, ref, 50, 1000, args.seed, 100)
        acc = float((rp.argmax(1) == test_y).double().mean())
        print(f"{name:34s} recon: PSNR {psnr:.2f} [{psnr_ci[0]:.2f}, {psnr_ci[1]:.2f}] dB, FCD {r['fcd']:.1f} "
              f"[{r['fcd_lo']:.1f}, {r['fcd_hi']:.1f}], judge accuracy {acc:.3f}, sharpness "
              f"{quality.sharpness_ratio(quality.high_frequency_energy(recon), real_energy):.3f} | mixture samples: "
              f"FCD {s['fcd']:.1f} [{s['fcd_lo']:.1f}, {s['fcd_hi']:.1f}], confidence {s['judge_confidence']:.3f}, "
              f"class entropy {s['class_entropy']:.2f} bits, sharpness "
              f"{quality.sharpness_ratio(quality.high_frequency_energy(samples), real_energy):.3f}", flush=True)

    score("as trained", model)
    for name, weight in (("fine-tuned, reconstruction only", 0.0), ("fine-tuned + adversarial", cfg.disc_weight)):
        tuned = copy.deepcopy(model)
        run_cfg = dataclasses.replace(cfg, disc_weight=weight)
        disc = adversarial.PatchDiscriminator(run_cfg.disc_widths)
        t0 = time.perf_counter()
        state = adversarial.finetune(tuned, disc, ds.train_x, run_cfg, args.seed, device)
        last = state["rows"][-50:]
        mean = {k: sum(r[k] for r in last) / len(last) for k in ("lambda", "d_real", "d_fake", "l_rec")}
        print(f"{name}: {run_cfg.steps} steps of {run_cfg.batch_size} ({time.perf_counter() - t0:.0f} s); last 50 "
              f"steps: λ {mean['lambda']:.3g}, D logits real {mean['d_real']:.3f} / fake {mean['d_fake']:.3f}, "
              f"L_rec {mean['l_rec']:.1f} nats", flush=True)
        score(name, tuned)


if __name__ == "__main__":
    main()
