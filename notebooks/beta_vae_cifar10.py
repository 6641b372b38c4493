# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # β-VAE on CIFAR-10
#
# This notebook runs the `vaelab` pipeline (or reads a run that is already there) and shows what it produced: the
# encoder, decoder and loss, the training curves of every β, 16 images generated from noise, the 10-step
# interpolations, and the report's comparison of the β values. Nothing is recomputed here: every figure and
# number is read from the pipeline's outputs (`metrics/`, `reports/`), so the notebook and `reports/report.md`
# always agree.
#
# On Colab: set `REPO_URL` below, pick `RUN`, and run all cells (Runtime → Run all). A GPU runtime is used when
# present; the trial run takes a few minutes even on the CPU, the full run about two hours on 2 CPU cores.

# %% tags=["parameters"]
REPO_URL = ""  # the git URL of this repository, cloned when the notebook is not opened inside a checkout
RUN = "trial"  # "trial": every stage on 2,000 images; "full": the default `dvc repro`; "none": read what is there
REPO_DIR = ""  # an existing checkout to use ("" = the checkout this notebook is in, or the clone)
RUNS = {  # what each choice does, and how long it took where it was timed (2-core CPUs; a GPU is faster)
    "trial": "every stage on 2,000 images: 6.8 min on a 2-core AVX2 CPU before the β sweep and control set joined",
    "full": "the default `dvc repro`: 115 min from scratch on a 2-core AVX-512 CPU (2026-12-08), every stage "
            "included; over 3 h on a 2-core AVX2 CPU",
    "none": "reads the run already in the checkout, trains nothing",
}
print(f"RUN = {RUN!r}: {RUNS.get(RUN, 'unknown: choose trial, full or none')}")

# %%
import os
import subprocess
import sys
from pathlib import Path

import torch


def sh(command: str) -> None:
    """Run a shell command in the repository, echoing it; stop the notebook if it fails."""
    print("$", command, flush=True)
    subprocess.run(command, shell=True, check=True)


def find_checkout() -> Path | None:
    """The vaelab checkout at REPO_DIR (or $VAELAB_REPO), else the one holding the working folder, else None."""
    start = Path(REPO_DIR or os.environ.get("VAELAB_REPO", "") or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "src" / "vaelab").is_dir():
            return folder
    return None


root = find_checkout()
if root is None:
    if not REPO_URL:
        raise SystemExit("Not inside a vaelab checkout: set REPO_URL to the repository's git URL (or REPO_DIR).")
    sh(f"git clone --depth 1 {REPO_URL} vaelab")
    root = Path("vaelab").resolve()
os.chdir(root)
sys.path.insert(0, str(root / "src"))
if "google.colab" in sys.modules:
    # Keep Colab's own CUDA build of torch and torchvision: install everything else.
    keep = [line for line in Path("requirements.txt").read_text().splitlines()
            if not line.startswith(("torch==", "torchvision=="))]
    Path("/tmp/vaelab-requirements.txt").write_text("\n".join(keep) + "\n")
    sh(f"{sys.executable} -m pip install -q -r /tmp/vaelab-requirements.txt")
print(f"repository: {root}; device: {'cuda (' + torch.cuda.get_device_name() + ')' if torch.cuda.is_available() else 'cpu'}")

# %%
TRIAL = ("-S data.subset=2000 -S train.epochs=2 -S judge.epochs=2 -S evaluate.n_samples=2000 "
         "-S evaluate.iw_images=200 -S evaluate.kid_subset_size=200 -S evaluate.kid_subsets=10 "
         "-S sweep.subset=1000 -S sweep.epochs=1 -S sweep.eval_images=200 -S 'control.seeds=[0]' "
         "-S control.subset=2000 -S control.epochs=1 -S control.score_images=1000 -S control.dci_train=300 "
         "-S control.dci_test=200 -S sampling.diffusion.train_steps=500")  # the README's quick trial
if RUN == "trial":
    sh(f"dvc exp run {TRIAL}")
elif RUN == "full":
    sh("dvc repro")
elif RUN != "none":
    raise ValueError(f"RUN must be 'trial', 'full' or 'none', got {RUN!r}")
print(f"the pipeline's outputs in {root}: {', '.join(sorted(p.name for p in Path('metrics/betas').glob('beta_*')))}")

# %% [markdown]
# ## 1. The encoder, the decoder and the loss
#
# Shown from the package itself, so this is the code that trained the models below.

# %%
import inspect

from IPython.display import Code, Image, Markdown, display

from vaelab import loss, model

for obj in (model.Encoder, model.Decoder, model.reparameterize, loss.kl_normal, loss.gaussian_nll, loss.vae_loss):
    display(Code(inspect.getsource(obj), language="python"))

# %% [markdown]
# ## 2. Training curves of every β

# %%
import pandas as pd

from vaelab.params import load_params
from vaelab.layout import BetaPaths, find_beta

params = load_params("params.yaml")
paths = {beta: find_beta(f"{beta:g}") for beta in params.train.betas}
display(Markdown("**Every β overlaid**"), Image("reports/comparison/training_curves.png"))
for beta, p in paths.items():
    display(Markdown(f"**β = {beta:g}**"), Image(str(p.figures / "training_curves.png")))
curves = pd.read_csv("reports/comparison/training_curves.csv")
curves.pivot_table(index="epoch", columns="beta", values=["test_bpd", "test_kl", "test_recon"]).round(3)

# %% [markdown]
# ## 3. Sixteen images generated from noise
#
# Per β: z ~ N(0, I) decoded, and the ex-post sampler's draws (the mixture or the diffusion prior that
# `sampling.prior` names, fitted by stage `sampler` to the codes of the training images).

# %%
for beta, p in paths.items():
    display(Markdown(f"**β = {beta:g}: z ~ N(0, I)**"), Image(str(p.figures / "prior_samples.png")),
            Markdown(f"**β = {beta:g}: ex-post sampler**"), Image(str(p.figures / "sampler_samples.png")))

# %% [markdown]
# ## 4. Interpolations in 10 steps
#
# Between two sampler draws that the judge labels as different classes (its label and confidence under each
# frame), between the codes of two test images of different classes, and between two random points of N(0, I).

# %%
for beta, p in paths.items():
    display(Markdown(f"**β = {beta:g}**"), Image(str(p.figures / "interpolation_sampler.png")),
            Image(str(p.figures / "interpolation_test.png")), Image(str(p.figures / "interpolation_prior.png")))

# %% [markdown]
# ## 5. How β changed visual quality and the organisation of the code
#
# The report's summary (≤ 300 words, written from the measured numbers: a direction is named only where the 95%
# intervals separate), the β sweep's rate–distortion plane it reads from, and the comparison table.

# %%
report = Path("reports/report.md").read_text()
summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0].strip()
display(Markdown(summary))
print(f"{len(summary.split())} words")
display(Image("reports/sweep/rate_distortion.png"))

# %%
import json

rows = []
for beta, p in paths.items():
    ev = json.loads(p.eval_metrics.read_text())
    rows.append({"β": f"{beta:g}", **{k: ev[k] for k in (
        "test_bpd", "rate_nats", "test_psnr", "fcd", "sampler_fcd", "recon_fcd", "total_correlation",
        "active_units_0p1", "factor_score", "factor_r2", "probe_accuracy")}})
pd.DataFrame(rows).set_index("β").round(3)

# %% [markdown]
# ## MLflow runs
#
# Every β is a run in the MLflow store (`mlflow server --backend-store-uri sqlite:///mlflow.db`, then
# http://127.0.0.1:5000); the links below open each run's page there.

# %%
for beta, p in paths.items():
    run = json.loads(p.run_file.read_text())
    registered = json.loads(p.registered.read_text())
    experiment = subprocess.run(
        [sys.executable, "-c", "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
         "print(mlflow.get_run(sys.argv[2]).info.experiment_id)", run["tracking_uri"], run["run_id"]],
        capture_output=True, text=True, check=True).stdout.strip()
    display(Markdown(f"- β = {beta:g}: [run {run['run_name']}](http://127.0.0.1:5000/#/experiments/{experiment}/runs/"
                     f"{run['run_id']}), registered as `models:/{registered['registered_model']}@{registered['alias']}`"))
