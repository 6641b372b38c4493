"""Data-parallel training for real: two gloo processes on CPU against one process with the whole batch."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import vaelab.model
from vaelab.data import batch_indices, to_unit
from vaelab.model import VAE
from vaelab.params import ModelConfig, TrainConfig
from vaelab.train import NonFiniteLossError, batch_terms, evaluate_terms, train

SMALL = ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=0)
CPU = torch.device("cpu")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _join(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)


def _spawn(fn, folder: Path, *args) -> list[dict]:
    """Run fn(rank, world=2, folder, *args) in two processes; each writes rank<r>.json, returned in rank order."""
    mp.spawn(fn, args=(2, str(folder), *args), nprocs=2, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def _no_noise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu  # z = mu: the two ranks and the single process see the same latent codes


def _gradient_worker(rank: int, world: int, folder: str, cfg: TrainConfig) -> None:
    _join(rank, world, folder)
    vaelab.model.reparameterize = _no_noise
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = DistributedDataParallel(VAE(SMALL))
    x = images(64)
    gen = torch.Generator().manual_seed(0)
    idx = next(iter(batch_indices(len(x), cfg.batch_size // world, gen, rank, world)))
    batch_terms(model, to_unit(x[idx]), 1.0, cfg, CPU)["loss"].backward()
    grads = {n: p.grad.tolist() for n, p in model.module.named_parameters() if p.requires_grad}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps({"grads": grads, "idx": idx.tolist()}))
    dist.destroy_process_group()


def test_two_processes_with_half_batches_give_the_single_process_gradient(tmp_path, monkeypatch):
    cfg = TrainConfig(batch_size=16, bf16=False)
    ranks = _spawn(_gradient_worker, tmp_path, cfg)

    monkeypatch.setattr(vaelab.model, "reparameterize", _no_noise)
    torch.manual_seed(100)  # rank 0's weights
    single = VAE(SMALL)
    x = images(64)
    (idx,) = [next(iter(batch_indices(len(x), cfg.batch_size, torch.Generator().manual_seed(0))))]
    assert sorted(ranks[0]["idx"] + ranks[1]["idx"]) == sorted(idx.tolist())  # the ranks split the global batch
    assert not set(ranks[0]["idx"]) & set(ranks[1]["idx"])
    batch_terms(single, to_unit(x[idx]), 1.0, cfg, CPU)["loss"].backward()
    for name, p in single.named_parameters():
        if not p.requires_grad:
            continue
        for r in ranks:
            got = torch.tensor(r["grads"][name])
            torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6, msg=f"{name} on a rank")
    # A check that the comparison can fail: one rank's own, un-averaged gradient is not the global one.
    torch.manual_seed(100)
    half = VAE(SMALL)
    batch_terms(half, to_unit(x[torch.tensor(ranks[0]["idx"])]), 1.0, cfg, CPU)["loss"].backward()
    assert not torch.allclose(half.decoder.out.bias.grad, single.decoder.out.bias.grad, rtol=1e-3)


def _train_worker(rank: int, world: int, folder: str, cfg: TrainConfig) -> None:
    """Train once as asked, then once more with a stand-in feature network that returns NaN on rank 1 only, at
    epoch 2, step 2 (4 steps per epoch, 2 calls per step: x and its reconstruction)."""
    _join(rank, world, folder)
    vaelab.model.reparameterize = _no_noise  # noise-free test terms: comparable with one process's evaluation
    result: dict = {}
    for nan_on_rank in (None, 1):
        torch.manual_seed(rank)
        model = DistributedDataParallel(VAE(SMALL))
        calls = []

        def activations(x: torch.Tensor) -> list[torch.Tensor]:
            if model.module.training:
                calls.append(1)
            poison = rank == nan_on_rank and len(calls) == 11
            return [x * (float("nan") if poison else 1.0)]

        try:
            history = train(model, images(64), images(20, 1), 1.0, cfg, seed=0, device=CPU, rank=rank,
                            world_size=world, progress=False, perceptual=activations)
            result["history"] = history
            # This rank alone, unsharded, after training: the last epoch's test terms must be these.
            result["test"] = evaluate_terms(model, images(20, 1), 1.0, CPU, bf16=False, perceptual=activations,
                                            perceptual_weight=cfg.perceptual_weight)
            result["weights"] = float(sum(p.double().sum() for p in model.module.parameters()))
        except NonFiniteLossError as e:
            result["error"] = str(e)
            result["nan_weights"] = float(sum(p.double().sum() for p in model.module.parameters()))
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_two_process_training_reports_the_whole_data_and_stops_together_on_a_nan(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, warmup_steps=2, bf16=False, perceptual_weight=1.0)
    a, b = _spawn(_train_worker, tmp_path, cfg)
    timing = ("epoch_seconds", "images_per_second")
    same = [{k: v for k, v in row.items() if k not in timing} for row in a["history"]]
    assert same == [{k: v for k, v in row.items() if k not in timing} for row in b["history"]]
    assert a["weights"] == b["weights"]  # one model, one record
    last = a["history"][-1]
    # The test terms were sharded over the ranks and reduced: they are the whole test set's.
    for k in ("loss", "recon", "kl", "bpd"):
        assert math.isclose(last[f"test_{k}"], a["test"][k], rel_tol=1e-5), k
    assert len(a["history"]) == 3 and all(math.isfinite(r["train_loss"]) for r in a["history"])
    # A NaN on rank 1 stops rank 0 as well, at the same step, before either applies the bad gradient.
    for r in (a, b):
        assert "on rank 1 of 2" in r["error"] and "epoch 2, step 2" in r["error"], r["error"]
    assert a["nan_weights"] == b["nan_weights"] and math.isfinite(a["nan_weights"])
