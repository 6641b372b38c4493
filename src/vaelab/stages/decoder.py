"""DVC stage `decoder@<beta>`: the patch adversarial fine-tune of one model's decoder (vaelab.adversarial, params
`decoder`), the encoder frozen, so that the codes, the rate and the β analysis stay those of the model as trained.

The tuned model is what the samplers, evaluation's sample sets, the figures and the CLI decode with; evaluate judges
the decoder as trained beside it. A checkpoint every decoder.checkpoint_every steps lets a killed stage resume (bit-
identical on CPU: every draw of a step follows from the seed and the step); each step's losses, adaptive λ and the
discriminator's mean logits on real and reconstructed images go to an MLflow run nested under the β's train run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from vaelab import adversarial, data, layout, storage, tracking
from vaelab.model import load_model
from vaelab.params import Params, flatten, to_dict
from vaelab.stages import runtime

# The numbers of each logged step (adversarial.finetune's rows), averaged over the last steps in decoder.json.
ROW_KEYS = ("l_rec", "l_g", "l_d", "lambda", "d_real", "d_fake")
SUMMARY_STEPS = 50


def resolved_config(params: Params, paths: layout.BetaPaths) -> dict[str, Any]:
    """What defines one fine-tune: the trained model's weights (md5), the seed and the `decoder` section."""
    return {"trained_md5": storage.weights_md5(paths.model), "seed": params.seed, "decoder": to_dict(params.decoder)}


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("decoder", argv, __doc__)
    return runtime.finish(f"decoder@{paths.tag}", run(params, beta, paths))


def run(params: Params, beta: float, paths: layout.BetaPaths, preset: str = "") -> int:
    """Fine-tune, save and log the decoder of the model in paths.model; `preset` names a params preset (its MLflow
    run nests under the preset's train run). Returns the exit status."""
    t0 = time.perf_counter()
    cfg, device = params.decoder, runtime.device()
    model, trained = load_model(paths.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, trained["data"]["subset"], trained["seed"])
    config = resolved_config(params, paths)
    ckpt = storage.load_checkpoint(paths.decoder_checkpoint)
    if ckpt is not None and ckpt["config"] != config:
        print(f"decoder: ignoring {paths.decoder_checkpoint}: it was written with other params or another model")
        ckpt = None
    torch.manual_seed(params.seed)  # the discriminator's initial weights
    disc = adversarial.PatchDiscriminator(cfg.disc_widths).to(device)
    state = ckpt["state"] if ckpt else None
    previous_seconds = ckpt["seconds"] if ckpt else 0.0
    train_run = storage.read_json(paths.run_file)
    uri, run_id = train_run["tracking_uri"], (ckpt["run_id"] if ckpt else None)
    tags = {"mlflow.parentRunId": train_run["run_id"], "dvc_stage": f"decoder@{paths.tag}", "beta": f"{beta:g}",
            "git_commit": tracking.git_commit(layout.repo_root()), "preset": preset or "default"}
    description = (f"{preset + ' preset: ' if preset else ''}β = {beta:g}: the decoder fine-tuned against a patch "
                   f"discriminator for {cfg.steps} steps of {cfg.batch_size} (adversarial weight {cfg.disc_weight:g} "
                   f"× λ from step {cfg.disc_start}), encoder frozen")
    print(f"decoder: β = {beta:g} on {device}, {len(ds.train_x)} images, {cfg.steps} steps"
          + (f", resuming after step {state['step']}" if state else ""))
    with tracking.run(uri, params.tracking.experiment, f"{train_run['run_name']}/decoder", run_id=run_id, tags=tags,
                      description=description) as active:
        if active != run_id:  # a new run, or the resumed run's store was reset: its params and every row so far
            tracking.log_params(flatten({"decoder": config["decoder"]}) | {"seed": params.seed,
                                                                            "trained_md5": config["trained_md5"]})
            tracking.log_rows(state["rows"] if state else [])
        else:  # a step checkpointed just before a kill may not have reached MLflow
            tracking.set_tags({"resumed_from_step": str(state["step"])})
            logged = {step for step, _ in tracking.metric_history(uri, active, "lambda")}
            tracking.log_rows([r for r in state["rows"] if int(r["step"]) not in logged])
        run_id = active
        step = state["step"] if state else 0
        loop_seconds = ckpt["loop_seconds"] if ckpt else 0.0
        while step < cfg.steps:
            t_loop = time.perf_counter()
            state = adversarial.finetune(model, disc, ds.train_x, cfg, params.seed, device, resume=state,
                                         until=step + cfg.checkpoint_every)
            new_rows, step = state["rows"][step:], state["step"]
            loop_seconds += time.perf_counter() - t_loop
            # Checkpoint first: a step that reached MLflow is always one a resumed run starts after.
            storage.save_checkpoint(paths.decoder_checkpoint, {
                "config": config, "run_id": run_id, "state": state, "loop_seconds": loop_seconds,
                "seconds": previous_seconds + time.perf_counter() - t0})
            storage.write_text(paths.decoder_steps, pd.DataFrame(state["rows"]).to_csv(index=False))
            tracking.log_rows(new_rows)
            last = new_rows[-1]
            print(f"decoder: β = {beta:g}: step {step}/{cfg.steps}: L_rec {last['l_rec']:.1f} nats, λ "
                  f"{last['lambda']:.3g}, D logits real {last['d_real']:.2f} / fake {last['d_fake']:.2f}", flush=True)
        # The tuned weights from the final state: a rerun after a failure past the last checkpoint skips the loop,
        # and `model` would otherwise still hold the decoder as trained.
        model.decoder.load_state_dict(state["decoder"])
        model.log_sigma.data.copy_(state["log_sigma"])
        seconds = previous_seconds + time.perf_counter() - t0
        tail = state["rows"][-SUMMARY_STEPS:]
        summary = {"beta": beta, "steps": cfg.steps, "batch_size": cfg.batch_size, "disc_weight": cfg.disc_weight,
                   # The stage's wall time (loading and logging included); the steps' own time per step.
                   "seconds": seconds, "seconds_per_step": loop_seconds / cfg.steps,
                   **{f"last_{k}": sum(r[k] for r in tail) / len(tail) for k in ROW_KEYS},
                   "summary_steps": len(tail)}
        storage.save_model(paths.tuned_model, model, trained | {"decoder": config})
        storage.write_json(paths.decoder_metrics, summary)
        tracking.log_metrics({"seconds": seconds})
        tracking.log_artifact(paths.decoder_steps)
    paths.decoder_checkpoint.unlink(missing_ok=True)  # done: the next run of this stage starts from scratch
    print(f"decoder: β = {beta:g} done in {seconds / 60:.1f} min; last {len(tail)} steps: L_rec "
          f"{summary['last_l_rec']:.1f} nats, λ {summary['last_lambda']:.3g}, D logits real "
          f"{summary['last_d_real']:.2f} / fake {summary['last_d_fake']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
