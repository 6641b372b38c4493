"""The DVC pipeline: declared deps cover the code each stage runs, and a real `dvc repro` end to end."""
from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from conftest import REPO, _env, _run, assert_notebook_shows_the_run, copy_of
from vaelab import layout

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


SRC = REPO / "src"


def _module_file(name: str) -> Path | None:
    """The source file of module `name` under src/ (a package's __init__.py), or None outside this package."""
    base = SRC.joinpath(*name.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _reachable_package_files(module: str) -> set[str]:
    """Files of the vaelab package that running `module` can import, relative to the repo: the closure over every
    import statement in their source, at the top or inside a function (a lazy import runs when the stage calls it),
    and the packages that hold them. Read from the source, so no stage is imported."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c imports a and a.b first
            f = _module_file(".".join(parts[:i]))
            if f is None or f in seen:
                continue
            seen.add(f)
            package = ".".join(parts[:i]) if f.name == "__init__.py" else ".".join(parts[:i - 1])
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    todo += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                        base = ".".join(anchor + ([base] if base else []))
                    todo += [base, *(f"{base}.{a.name}" for a in node.names)]  # a name may be a submodule
    return {os.path.relpath(f, REPO) for f in seen if f.is_relative_to(SRC / "vaelab")}


def _imported_package_files(module: str) -> set[str]:
    """Files of the vaelab package loaded by importing `module` in a fresh interpreter, relative to the repo."""
    code = (f"import sys, {module}; print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
            f"if n.startswith('vaelab') and getattr(m, '__file__', None)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return {os.path.relpath(p, REPO) for p in out.splitlines() if p}  # one path a line: paths may hold spaces


def _stage_module(stage: str) -> tuple[str, set[str]]:
    """The module a dvc.yaml stage runs (`python -m ...`) and its literal file deps."""
    spec = DVC_YAML["stages"][stage]
    spec = spec.get("do", spec)
    deps = {d for d in spec["deps"] if isinstance(d, str)}
    return re.search(r"python -m (\S+)", spec["cmd"]).group(1), deps


@pytest.mark.parametrize("stage", sorted(DVC_YAML["stages"]))
def test_stage_deps_cover_imported_modules(stage):
    module, deps = _stage_module(stage)
    missing = _reachable_package_files(module) - deps
    assert not missing, f"stage {stage} runs code that its deps do not list: {sorted(missing)}"


def test_the_source_reading_finds_every_module_an_import_loads():
    """The known answer for the reading above: what a fresh interpreter loads on importing the training stage is
    all among the files the reading finds."""
    module, _ = _stage_module("train")
    loaded = _imported_package_files(module)
    assert "src/vaelab/loss.py" in loaded and loaded <= _reachable_package_files(module), \
        sorted(loaded - _reachable_package_files(module))


@pytest.mark.parametrize("stage", ["judge", "audit", "features", "train", "decoder", "sampler"])
def test_expensive_stages_stay_in_the_run_cache(stage):
    """DVC 3 keeps a stage with a `cache: false` entry under `outs:` out of its run-cache (under `metrics:` or
    `plots:` it does not): the stages that cost minutes must have none, or a shared cache cannot restore them
    (docs/dvc-remote.md; tests/test_remote_queue.py restores them for real)."""
    spec = DVC_YAML["stages"][stage]
    spec = spec.get("do", spec)
    uncached = [next(iter(o)) for o in spec.get("outs", []) if isinstance(o, dict) and
                next(iter(o.values())).get("cache") is False]
    assert uncached == [], f"{stage}: move {uncached} under plots: or metrics: (keeping cache: false)"


def test_repo_root_of_a_queued_experiment(tmp_path, monkeypatch):
    ws = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    ws.mkdir(parents=True)
    monkeypatch.chdir(ws)
    assert layout.repo_root() == (tmp_path / "repo").resolve()
    monkeypatch.chdir(tmp_path)
    assert layout.repo_root() == tmp_path.resolve()


@pytest.fixture(scope="module")
def small_repo(reproduced_repo, tmp_path_factory) -> Path:
    """This module's own copy of the session's reproduced repo: its tests change params and rerun it."""
    return copy_of(reproduced_repo, tmp_path_factory.mktemp("e2e") / "repo")


@pytest.mark.slow
def test_dvc_repro_end_to_end(reproduced_repo):
    from vaelab import tracking

    repo = reproduced_repo
    env = _env(repo)
    assert "from local copy" in (repo.parent / "repro.log").read_text()

    # Report: table rows for both betas, every linked figure exists.
    md = (repo / "reports" / "report.md").read_text()
    assert re.search(r"^\| 1 \| \d+\.\d{3} \[", md, re.M) and re.search(r"^\| 5 \| \d+\.\d{3} \[", md, re.M)
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert len(links) >= 12
    for link in links:
        assert (repo / "reports" / link).is_file(), link

    # DVC metrics of every beta.
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo, env))
    flat = json.dumps(shown)
    for tag in ("1", "5"):
        assert f"metrics/betas/beta_{tag}/eval.json" in flat and f"metrics/betas/beta_{tag}/train.json" in flat
    headline = ("test_bpd", "test_iw_bpd", "rate_nats", "distortion_nats", "test_psnr", "total_correlation",
                "active_units_0p01", "active_units_0p1", "active_units_0p5", "probe_accuracy", "factor_score",
                "factor_r2", "fcd", "judge_confidence", "class_entropy", "sampler_fcd", "sampler_judge_confidence",
                "sampler_class_entropy", "recon_fcd", "recon_judge_accuracy",
                # the audit network's verdicts and the non-learned sharpness ratio, on the same three image sets
                "audit_fcd", "audit_confidence", "audit_class_entropy", "audit_sampler_fcd", "audit_recon_fcd",
                "audit_recon_accuracy", "sharpness_ratio", "sampler_sharpness_ratio", "recon_sharpness_ratio",
                *(f"factor_{kind}_{f}" for kind in ("score", "r2")
                  for f in ("rotation", "scale", "saturation", "vshift", "brightness", "hue", "flip", "shift")))
    for key in (*headline, *(f"{k}_{e}" for k in headline for e in ("lo", "hi")), "kid", "tc_sampled",
                "tc_sampled_self_weight", "kl_dims_sum_nats", "eval_seconds", "sampler_kid"):
        assert f'"{key}"' in flat, key
    assert "metrics/judge.json" in flat and '"test_accuracy"' in flat and '"test_confidence"' in flat
    assert "metrics/audit.json" in flat and "metrics/features.json" in flat
    # The real-image reference row of both scorers, and every stage's own time summed with the benchmark.
    reference = json.loads((repo / "metrics" / "reference.json").read_text())
    assert {"real_fcd", "real_kid", "real_judge_confidence"} <= set(reference["judge"]) <= set(reference["audit"])
    timings = json.loads((repo / "metrics" / "timings.json").read_text())
    stages = set(_run(["dvc", "stage", "list", "--name-only"], repo, env).split())
    assert set(timings["stages"]) == stages  # the timings stage counts itself too
    assert timings["total_seconds"] == pytest.approx(sum(timings["stages"].values()), abs=0.5)
    assert timings["benchmark_images_per_second"] > 0 and timings["train_step_profile_ms"]["decoder forward"] > 0
    assert "| **total** |" in (repo / "docs" / "performance.md").read_text()
    for tag in ("1", "5"):
        ev = json.loads((repo / "metrics" / "betas" / f"beta_{tag}" / "eval.json").read_text())
        # N(0, I) prior: KL per dimension sums to the rate; every interval holds its estimate.
        assert ev["kl_dims_against_prior"] and ev["kl_dims_sum_nats"] == pytest.approx(ev["rate_nats"], rel=0.01)
        for key in headline:
            assert ev[f"{key}_lo"] <= ev[key] + 1e-9 and ev[key] <= ev[f"{key}_hi"] + 1e-9, key
        assert not any(k.startswith(("gmm_", "tau_")) for k in ev)
        # The decoder ablation: the same codes decoded by the decoder as trained, judged alike.
        for key in ("trained_sampler_fcd", "trained_mixture_fcd", "trained_diffusion_fcd", "trained_ceiling_fcd",
                    "trained_recon_fcd", "trained_recon_judge_accuracy", "tuned_test_psnr"):
            assert ev[f"{key}_lo"] <= ev[key] + 1e-9 <= ev[f"{key}_hi"] + 2e-9, key
        tuned = json.loads((repo / "metrics" / "betas" / f"beta_{tag}" / "decoder.json").read_text())
        assert tuned["steps"] == 4 and all(math.isfinite(tuned[f"last_{k}"]) for k in ("lambda", "d_real", "l_rec"))
    for section in ("## Likelihood and reconstruction", "## Sample quality", "## Organisation of the latent space",
                    "| real train images (reference) |", "(comparison/rate_distortion.png)",
                    "(comparison/traversals.png)", "(comparison/training_curves.png)", "| β = 5: z ~ N(0, I) decoded |",
                    "| β = 1: diffusion sampler |", "| β = 1: mixture sampler |",
                    "| β = 1: ceiling: held-out training codes decoded |", "figures/beta_5/sampler_samples.png)",
                    "figures/beta_1/interpolation_sampler.png)", "| rotation, β = 1 |",
                    "## The decoder: as trained and fine-tuned", "| β = 5: reconstructions, decoder as trained |"):
        assert section in md, section
    # The β sweep and the control study: one point per beta (and seed), every interval holding its estimate.
    sweep = json.loads((repo / "metrics" / "sweep.json").read_text())
    assert [p["beta"] for p in sweep["points"]] == [1, 64]
    for p in sweep["points"]:
        for key in ("rate_nats", "distortion_fixed_sigma_nats", "test_psnr", "recon_fcd", "sampler_fcd",
                    "active_units_0p01", "effective_units", "units_90", "total_correlation", "traversal_change"):
            assert p[f"{key}_lo"] <= p[key] + 1e-9 <= p[f"{key}_hi"] + 2e-9, key
    # The seed spread: β = 64 with the top-level seed 0 and again with seed 1, measured alike.
    spread = sweep["seed_spread"]
    assert [(r["beta"], r["seed"]) for r in spread["runs"]] == [(64, 0), (64, 1)]
    assert spread["sd"]["rate_nats"] > 0 and spread["sd"]["rate_nats"] == pytest.approx(
        abs(spread["runs"][0]["rate_nats"] - spread["runs"][1]["rate_nats"]) / 2 ** 0.5)
    assert "| 64, seed 1 |" in md and "| seed SD (largest over β) |" in md
    control = json.loads((repo / "metrics" / "control.json").read_text())
    assert {(p["beta"], p["seed"]) for p in control["points"]} == {(1, 0), (8, 0)}
    assert all(0 <= p["mig"] <= 1 and 0 <= p["dci_completeness"] <= 1 for p in control["points"])
    for folder, names in (("sweep", ("rate_distortion", "metrics_vs_beta", "kl_spectrum", "traversals")),
                          ("control", ("scores", "traversal_beta_1", "traversal_beta_8", "examples"))):
        for name in names:
            assert (repo / "reports" / folder / f"{name}.png").is_file(), (folder, name)
    for section in ("## The β sweep", "## The control set: β against known factors", "(sweep/rate_distortion.png)",
                    "(control/scores.png)"):
        assert section in md, section
    # Evaluation writes metrics only: the sampler stage owns the sampler file.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert all(o["path"].startswith(("metrics/betas/beta_1/", "metrics/timings/")) for o in lock["evaluate@1"]["outs"])
    assert "models/sampler/beta_1" in [o["path"] for o in lock["sampler@1"]["outs"]]

    # MLflow: one finished run per beta, tagged, with per-epoch and final metrics.
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    every = tracking.find_runs(uri, "cifar10-beta-vae")
    runs = {r["name"]: r for r in every if "mlflow.parentRunId" not in r["tags"] and "vaelab_group" not in r["tags"]}
    assert set(runs) == {"beta=1", "beta=5"}
    # The sweep's and the control study's runs nest under one parent run each.
    parents = {r["tags"]["vaelab_group"]: r["run_id"] for r in every if "vaelab_group" in r["tags"]}
    assert set(parents) == {"beta-sweep", "control-study"}
    children = {r["name"]: r["tags"]["mlflow.parentRunId"] for r in every if "mlflow.parentRunId" in r["tags"]}
    assert children == {"sweep/beta=1": parents["beta-sweep"], "sweep/beta=64": parents["beta-sweep"],
                        "sweep/beta=64/seed=1": parents["beta-sweep"],
                        "control/beta=1/seed=0": parents["control-study"],
                        "control/beta=8/seed=0": parents["control-study"],
                        # each β's decoder fine-tune nests under the β's run
                        "beta=1/decoder": runs["beta=1"]["run_id"], "beta=5/decoder": runs["beta=5"]["run_id"]}
    finetune = next(r for r in every if r["name"] == "beta=1/decoder")
    assert finetune["status"] == "FINISHED" and finetune["params"]["decoder.steps"] == "4"
    assert [s for s, _ in tracking.metric_history(uri, finetune["run_id"], "lambda")] == [1, 2, 3, 4]
    for name, r in runs.items():
        assert r["status"] == "FINISHED"
        assert r["tags"]["dvc_stage"] == f"train@{name.split('=')[1]}"
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", r["tags"]["git_commit"])
        assert r["params"]["beta"] in ("1.0", "5.0") and r["params"]["data.n_train"] == "1000"
        for key in ("test_bpd", "test_psnr", "active_units", "rate_nats", "train_loss", "sampler_test_log_prob"):
            assert key in r["metrics"], key
        steps = [step for step, _ in tracking.metric_history(uri, r["run_id"], "train_loss")]
        assert steps == [1]  # step = epoch
        assert {step for step, _ in tracking.metric_history(uri, r["run_id"], "test_bpd")} == {1}

    # The logged model decodes z into images and samples through the sampler@1 file.
    registered = json.loads((repo / "models" / "sampler" / "beta_1" / "mlflow_model.json").read_text())
    generator = tracking.load_model(registered["model_uri"], uri)
    images = generator(torch.randn(4, generator.latent_dim))
    assert images.shape == (4, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    from vaelab import samplers, storage

    # The registered model draws from the sampler of sampling.prior (the diffusion prior), sampler.pt.
    state, meta = storage.load_state(repo / "models" / "sampler" / "beta_1" / "sampler.pt")
    assert meta["kind"] == samplers.kind(generator.sampler) == "diffusion"
    torch.testing.assert_close(generator.sampler.state_dict(), state)
    assert generator.sample(3, torch.Generator().manual_seed(0)).shape == (3, 3, 32, 32)
    # evaluate judged both samplers and the ceiling, and names the one every consumer draws from.
    ev = json.loads((repo / "metrics" / "betas" / "beta_1" / "eval.json").read_text())
    assert ev["sampler_kind"] == "diffusion" and ev["sampler_fcd"] == ev["diffusion_fcd"] != ev["mixture_fcd"]
    assert ev["audit_sampler_fcd"] == ev["audit_diffusion_fcd"] and ev["ceiling_images"] == 100

    # Model Registry: one version per beta under one name, alias beta-<beta> on the version of that beta's run;
    # the run description names beta, epochs, data size and the final bits/dim.
    versions = tracking.model_versions(uri, "cifar10-vae")
    assert sorted(a for v in versions for a in v["aliases"]) == ["beta-1", "beta-5"]
    by_alias = {v["aliases"][0]: v for v in versions}
    for name, r in runs.items():
        beta = name.split("=")[1]
        assert by_alias[f"beta-{beta}"]["run_id"] == r["run_id"]
        note = r["tags"]["mlflow.note.content"]
        assert f"β = {beta}," in note and "1 epochs on 1000 CIFAR-10 training images" in note, note
        assert re.search(r"final test \d+\.\d{3} bits/dim", note), note
    codec = tracking.load_model("models:/cifar10-vae@beta-5", uri)
    assert codec.encode(torch.rand(2, 3, 32, 32)).shape == (2, codec.latent_dim)
    beta5 = json.loads((repo / "models" / "sampler" / "beta_5" / "mlflow_model.json").read_text())
    assert (beta5["registered_model"], beta5["alias"]) == ("cifar10-vae", "beta-5")
    assert len(versions) == 2  # one registered version per beta

    # The HTML report stands alone: every image is embedded, nothing is linked.
    page = (repo / "reports" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(links)
    assert not re.search(r'src="(?!data:)', page)

    # The classifiers: one finished run each in their experiment, per-epoch accuracy, and a loadable model.
    classifier_runs = {r["tags"]["dvc_stage"]: r for r in tracking.find_runs(uri, "cifar10-judge")}
    assert set(classifier_runs) == {"judge", "audit", "features"}
    for role, run in classifier_runs.items():
        assert run["status"] == "FINISHED" and run["tags"]["role"] == role
        assert [s for s, _ in tracking.metric_history(uri, run["run_id"], "test_accuracy")][:1] == [1]
        run_file = json.loads((repo / "models" / role / "mlflow_run.json").read_text())
        logits = tracking.load_model(run_file["model_uri"], uri)(torch.rand(3, 3, 32, 32))
        assert logits.shape == (3, 10)
    # The perceptual term was on (conftest): train ran with the feature network, and says so in its MLflow run.
    for r in runs.values():
        assert float(r["params"]["train.perceptual_weight"]) > 0 and "features_md5" in r["params"]
    # The evaluation metrics are in each beta's run too, at the last epoch's step.
    for r in runs.values():
        for key in ("test_iw_bpd", "total_correlation", "fcd", "kid", "factor_score"):
            assert key in r["metrics"], key

    # A second repro with nothing changed runs nothing.
    assert "didn't change, skipping" in _run(["dvc", "repro"], repo, env)


@pytest.mark.slow
def test_the_notebook_stage_executes_the_hand_in_against_the_run(reproduced_repo):
    """Stage `notebook` ran the hand-in top to bottom against the session's reproduced copy (RUN = "none") and
    wrote it with every output: an output under every code cell, the five items, and the β table's numbers equal to
    the metrics files of this run."""
    assert_notebook_shows_the_run(reproduced_repo)


@pytest.mark.slow
def test_evaluate_and_figures_draw_from_the_sampler_stage_and_refuse_a_stale_one(reproduced_repo):
    """The sampler is fitted once, by sampler@<beta>; evaluate and figures refuse one fitted with other settings
    than params.yaml's and name the stage to rerun."""
    from vaelab import storage

    repo = reproduced_repo
    env = _env(repo)
    folder = repo / "models" / "sampler" / "beta_1"
    state, settings = storage.load_state(folder / "alternative.pt")  # the mixture, judged beside the prior
    assert settings["kind"] == "mixture" and settings["components"] == len(state["weights"]) == 10
    # Fitted to the codes of the model that every consumer decodes with: the decoder of decoder@1.
    assert settings["model_md5"] == storage.weights_md5(repo / "models" / "decoder" / "beta_1" / "model.pt")
    prior_state, prior_settings = storage.load_state(folder / "sampler.pt")  # what every consumer draws from
    assert prior_settings["kind"] == "diffusion" and prior_settings["diffusion"]["train_steps"] == 20
    originals = {p: p.read_bytes() for p in folder.glob("*.pt")}
    try:
        storage.save_state(folder / "alternative.pt", state, {**settings, "components": 3})
        r = subprocess.run([sys.executable, "-m", "vaelab.stages.evaluate", "--beta", "1"], cwd=repo, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 2 and "dvc repro sampler@1" in r.stderr and "'components': 3" in r.stderr, r.stderr
        (folder / "alternative.pt").write_bytes(originals[folder / "alternative.pt"])
        storage.save_state(folder / "sampler.pt", prior_state,
                           {**prior_settings, "diffusion": {**prior_settings["diffusion"], "train_steps": 3}})
        for stage in ("figures", "evaluate"):
            r = subprocess.run([sys.executable, "-m", f"vaelab.stages.{stage}", "--beta", "1"], cwd=repo, env=env,
                               capture_output=True, text=True)
            assert r.returncode == 2 and "dvc repro sampler@1" in r.stderr and "differs in diffusion" in r.stderr, \
                r.stderr
    finally:
        for p, data in originals.items():
            p.write_bytes(data)


def _stages_changed_by(repo: Path, env: dict, path: Path, edit: Callable[[str], str]) -> set[str]:
    """The stages `dvc status` lists once `edit` has rewritten the file at `path`; the file is restored after."""
    original = path.read_text()
    try:
        path.write_text(edit(original))
        return set(re.findall(r"^(\S+):$", _run(["dvc", "status"], repo, env), re.M))
    finally:
        path.write_text(original)


def _appended(note: str) -> Callable[[str], str]:
    return lambda text: text + f"# {note}\n"


def _params_set(section: str, key: str, value: Callable[[Any], Any]) -> Callable[[str], str]:
    """An edit of params.yaml: `section.key` replaced by value(old)."""
    def edit(text: str) -> str:
        params = yaml.safe_load(text)
        params[section][key] = value(params[section][key])
        return yaml.safe_dump(params, sort_keys=False)
    return edit


@pytest.mark.slow
def test_edits_rerun_only_the_stages_that_use_them(reproduced_repo):
    repo, env = reproduced_repo, _env(reproduced_repo)
    src, params = repo / "src" / "vaelab", repo / "params.yaml"
    changed = _stages_changed_by(repo, env, src / "loss.py", _appended("an edit of the VAE's loss"))
    assert not {"judge", "audit", "features"} & changed and {"train@1", "train@5"} <= changed, changed
    # Editing the audit's architecture reruns the audit and what scores with it, never a VAE or another classifier.
    changed = _stages_changed_by(repo, env, src / "resnet.py", _appended("an edit of the audit's architecture"))
    assert changed == {"audit", "reference", "evaluate@1", "evaluate@5"}, changed
    # The decoder's fine-tune: its module and its params rerun the fine-tunes, never a VAE's training (the report
    # reads the decoder section too: it compares the recipe with the presets').
    changed = _stages_changed_by(repo, env, src / "adversarial.py", _appended("an edit of the fine-tune"))
    assert changed == {"decoder@1", "decoder@5"}, changed
    changed = _stages_changed_by(repo, env, params, _params_set("decoder", "disc_weight", lambda w: w / 2))
    assert changed == {"decoder@1", "decoder@5", "report"}, changed
    # Evaluation settings rerun the evaluation, never a classifier.
    changed = _stages_changed_by(repo, env, params, _params_set("evaluate", "n_samples", lambda n: n + 1))
    assert changed == {"reference", "evaluate@1", "evaluate@5"}, changed


@pytest.mark.slow
def test_a_preset_runs_outside_the_dag_and_reaches_the_report(small_repo):
    from vaelab import storage, tracking
    from vaelab.model import load_model
    from vaelab.precision import count_parameters

    repo = small_repo
    env = _env(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    base = params["presets"]["baseline"]
    base["train"].update({"epochs": 2, "betas": [1]})
    params["presets"] = {"baseline": base}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    # The DAG ignores presets: nothing but the report (which reads them) is out of date.
    assert set(re.findall(r"^(\S+):$", _run(["dvc", "status"], repo, env), re.M)) <= {"report"}

    bad = subprocess.run([sys.executable, "-m", "vaelab.stages.preset", "nope"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no preset 'nope'" in bad.stderr and "baseline" in bad.stderr
    log = _run([sys.executable, "-m", "vaelab.stages.preset", "baseline"], repo, env)
    assert "wrote reports/presets/baseline.json" in log
    result = json.loads((repo / "reports" / "presets" / "baseline.json").read_text())
    assert [b["beta"] for b in result["betas"]] == [1.0]
    assert result["model"]["latent_dim"] == 128 and result["train"]["epochs"] == 2
    assert result["judge_md5"] == storage.weights_md5(repo / "models" / "judge" / "judge.pt")
    (b1,) = result["betas"]
    model, _ = load_model(repo / "presets" / "baseline" / "models" / "beta_1" / "model.pt")
    assert b1["train"]["epochs"] == 2 and b1["train"]["parameters"] == count_parameters(model)
    for key in ("fcd", "sampler_fcd", "judge_confidence", "class_entropy", "test_bpd", "test_psnr"):
        assert isinstance(b1["eval"][key], float), key
    # Its own files and MLflow run; the default models are untouched.
    assert (repo / "presets" / "baseline" / "models" / "beta_1" / "model.pt").is_file()
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    runs = {r["name"]: r for r in tracking.find_runs(uri, "cifar10-beta-vae")}
    assert runs["baseline/beta=1"]["tags"]["preset"] == "baseline" and runs["beta=1"]["tags"]["preset"] == "default"
    assert "fcd" in runs["baseline/beta=1"]["metrics"]
    aliases = {a: v["run_id"] for v in tracking.model_versions(uri, "cifar10-vae") for a in v["aliases"]}
    assert aliases["baseline-beta-1"] == runs["baseline/beta=1"]["run_id"]
    assert aliases["beta-1"] == runs["beta=1"]["run_id"]

    # `dvc repro` now reruns the report only, which shows the baseline beside the default.
    log = _run(["dvc", "repro"], repo, env)
    assert "Running stage 'report'" in log and "Running stage 'train@" not in log
    md = (repo / "reports" / "report.md").read_text()
    assert "| `baseline`: the plain VAE" in md and f"| {b1['eval']['fcd']:.1f} [" in md
    assert "**final default**: baseline with train.epochs = 1" in md
    assert "Warning" not in md  # same judge


@pytest.mark.slow
def test_changing_betas_trains_only_new_ones(small_repo):
    repo = small_repo
    env = _env(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["betas"] = [1, 0.5]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = _run(["dvc", "repro"], repo, env)
    assert "Running stage 'train@0.5'" in log
    assert "Running stage 'train@1'" not in log
    md = (repo / "reports" / "report.md").read_text()
    assert re.search(r"^\| 0\.5 \|", md, re.M) and re.search(r"^\| 1 \|", md, re.M)
    assert not re.search(r"^\| 5 \|", md, re.M), "a removed beta must leave the report"


@pytest.mark.slow
def test_a_second_repro_while_one_runs_is_refused(small_repo):
    repo = small_repo
    env = _env(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 2  # retrains every beta: the first repro has minutes of work
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(repo.glob("checkpoints/beta_*/last.pt")) and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # a training stage has finished its first epoch: the repro holds the lock
        assert first.poll() is None, "the first repro ended before the second could start"
        second = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        # DVC 3 names the busy output and the process holding it; older versions refuse the whole repo lock.
        said = second.stdout + second.stderr
        assert "is busy, it is being blocked by" in said or "Unable to acquire lock" in said, said[-2000:]
        assert "Running stage" not in second.stdout + second.stderr  # the refused repro ran nothing
    finally:
        # The refusal is what is under test: stop the first repro and its stage (their own process group) rather
        # than wait minutes; this module's copy is not used after this test.
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
