"""The probes under scripts/ (the measurements docs/metrics.md cites for the recipes of `sampling`, `decoder` and
`control`) still run against the package as it is, on a tiny reproduced run, and print what the docs read off them."""
from __future__ import annotations

import math
import re
import sys

import pytest

from conftest import _env, _run

pytestmark = pytest.mark.slow

NUMBER = r"(-?[\d.]+|nan|inf)"


def _probe(repo, *args: str) -> str:
    return _run([sys.executable, *args], repo, _env(repo), timeout=600)


def _values(out: str, label: str) -> list[float]:
    """Every number printed after `label` on its line(s)."""
    return [float(v) for line in out.splitlines() if label in line
            for v in re.findall(rf"{re.escape(label)}\s+{NUMBER}", line)]


def test_prior_compare_scores_the_ceiling_the_mixture_and_the_diffusion_prior(reproduced_repo):
    out = _probe(reproduced_repo, "scripts/prior_compare.py", "models/sweep/beta_1/model.pt", "--n", "100",
                 "--temperatures", "1.0", "0.8",
                 "--diffusion", "hidden=16,blocks=1,timesteps=50,train_steps=5,sample_steps=3")
    rows = [line for line in out.splitlines() if " FCD " in line]
    assert [r.split(" FCD ")[0].strip().split(" (")[0] for r in rows] == [
        "ceiling", "mixture", "temperature 1", "temperature 0.8"], out
    assert all(math.isfinite(v) and v >= 0 for v in _values(out, "FCD")), out
    # The held-out codes are the encoder's own: their Fréchet distance to themselves is zero, norm ratio one.
    assert re.search(r"ceiling.*FD to held-out codes -?0\.00, norm ratio 1\.000", out), out


def test_finetune_probe_scores_the_decoder_as_trained_and_both_fine_tunes(reproduced_repo):
    out = _probe(reproduced_repo, "scripts/finetune_probe.py", "models/sweep/beta_1/model.pt", "--steps", "4",
                 "--batch-size", "8", "--n", "100", "--set", "disc_widths=[8,16,16]")
    rows = [line.split(" recon:")[0].strip() for line in out.splitlines() if " recon:" in line]
    assert rows == ["as trained", "fine-tuned, reconstruction only", "fine-tuned + adversarial"], out
    assert all(math.isfinite(v) for v in _values(out, "λ")), out
    assert all(0 < v < 100 for v in _values(out, "PSNR")), out


def test_control_budget_trains_and_scores_one_control_vae(reproduced_repo):
    out = _probe(reproduced_repo, "scripts/control_budget.py", "--epochs", "1", "--betas", "4", "--sigma", "0.3")
    line = next(line for line in out.splitlines() if line.startswith("σ 0.3, β 4, 1 epochs"))
    mig = float(re.search(rf"MIG {NUMBER}", line).group(1))
    dci = [float(v) for v in re.search(rf"DCI D {NUMBER} C {NUMBER} I {NUMBER}", line).groups()]
    assert 0 <= mig <= 1 and all(0 <= v <= 1 for v in dci), line
