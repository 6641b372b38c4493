"""One per-β file layout (vaelab.layout) and dvc.yaml held to it, for any list of betas; stage deps that are as
narrow as the code each stage runs (editing the audit never retrains a VAE; evaluation settings never retrain a
classifier)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from conftest import REPO
from vaelab import layout
from vaelab.layout import AUDIT, CLASSIFIERS, BetaPaths


def resolved_stages(root: Path) -> dict[str, dict[str, set[str]]]:
    """Every stage as DVC resolves dvc.yaml (foreach items and ${...} from params.yaml): its file deps, params and
    outputs (outs, metrics and plots alike)."""
    with Repo(str(root)) as repo:
        out = {}
        for s in repo.index.stages:
            params = {p for d in s.deps if type(d).__name__ == "ParamsDependency" for p in d.params}
            deps = {d.def_path for d in s.deps if type(d).__name__ != "ParamsDependency"}
            out[s.name] = {"deps": deps, "params": params, "outs": {o.def_path for o in s.outs}}
        return out


def copy_with_betas(tmp_path: Path, betas: list[float]) -> Path:
    """dvc.yaml and params.yaml (train.betas replaced) in a fresh DVC repository."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["betas"] = betas
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    Repo.init(str(root), no_scm=True).close()
    return root


def s(*paths: Path | str) -> set[str]:
    return {str(p) for p in paths}


def expected_beta_outputs(tag: str) -> dict[str, set[str]]:
    """What each per-β stage writes, by vaelab.layout."""
    p = BetaPaths(tag)
    return {
        f"train@{tag}": s(p.model_dir, p.train_metrics, p.history, p.steps, layout.timing_file(f"train@{tag}")),
        f"decoder@{tag}": s(p.tuned_dir, p.decoder_metrics, p.decoder_steps, layout.timing_file(f"decoder@{tag}")),
        f"sampler@{tag}": s(p.sampler_dir, p.sampler_metrics, layout.timing_file(f"sampler@{tag}")),
        f"evaluate@{tag}": s(p.eval_metrics, p.kl_per_dim, p.factor_response, layout.timing_file(f"evaluate@{tag}")),
        f"figures@{tag}": s(p.figures, layout.timing_file(f"figures@{tag}")),
    }


@pytest.mark.parametrize("betas", [[1, 5], [0.5, 1, 20]])
def test_dvc_yaml_writes_where_the_layout_says_for_every_beta(tmp_path, betas):
    stages = resolved_stages(copy_with_betas(tmp_path, betas))
    tags = [f"{b:g}" for b in betas]
    for tag in tags:
        p = BetaPaths(tag)
        assert p.model.parent == p.model_dir and p.sampler.parent == p.sampler_dir == p.registered.parent
        for stage, outs in expected_beta_outputs(tag).items():
            assert stages[stage]["outs"] == outs, stage
        assert p.tuned_model.parent == p.tuned_dir and p.decoder_checkpoint.parent == p.checkpoint.parent
        assert s(p.model_dir) <= stages[f"decoder@{tag}"]["deps"]
        # The run record of the β's MLflow run lies in model_dir; the model they decode with in tuned_dir.
        assert s(p.model_dir, p.tuned_dir) <= stages[f"sampler@{tag}"]["deps"]
        assert s(p.model_dir, p.tuned_dir, p.sampler_dir) <= stages[f"evaluate@{tag}"]["deps"]
        assert s(p.model_dir, p.tuned_dir, p.sampler_dir, p.history, p.steps, p.kl_per_dim, p.factor_response) <= \
            stages[f"figures@{tag}"]["deps"]
        # Every file the report reads for this beta lies in a folder it depends on.
        report = stages["report"]["deps"]
        assert str(layout.BETA_METRICS) in report and p.eval_metrics.is_relative_to(layout.BETA_METRICS)
        assert p.figures.parent == Path("reports/figures") and "reports/figures" in report
    for role, c in CLASSIFIERS.items():
        assert stages[role]["outs"] == s(c.model_dir, c.metrics, c.history, layout.timing_file(role))
        assert c.model.parent == c.model_dir
    assert stages["reference"]["outs"] == s(layout.REFERENCE, layout.timing_file("reference"))
    assert stages["report"]["outs"] == s(layout.REPORT, layout.REPORT_HTML, layout.COMPARISON,
                                         layout.timing_file("report"))
    assert layout.CURVES.parent == layout.COMPARISON
    assert s(AUDIT.metrics, CLASSIFIERS["judge"].metrics, layout.REFERENCE) <= stages["report"]["deps"]
    assert stages["timings"]["outs"] == s(layout.TIMINGS, layout.PERFORMANCE_DOC)
    assert str(layout.TIMINGS_DIR) in stages["timings"]["deps"]
    # Every stage but the aggregate itself writes its own time, where the layout says.
    timed = {stage for stage, spec in stages.items() if str(layout.timing_file(stage)) in spec["outs"]}
    assert timed == set(stages) - {"timings"}


def test_the_sweep_and_the_control_study_write_where_the_layout_says(tmp_path):
    root = copy_with_betas(tmp_path, [1, 5])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sweep"]["betas"], params["control"]["betas"], params["control"]["seeds"] = [0.5, 64], [1, 2.5], [0, 3]
    params["sweep"]["spread_betas"], params["sweep"]["spread_seeds"] = [64], [4, 7]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stages = resolved_stages(root)
    points = [layout.SweepPaths(t) for t in ("0.5", "64")] + [layout.SweepPaths("64", seed) for seed in (4, 7)]
    assert {p.stage for p in points} | {p.eval_stage for p in points} == {
        n for n in stages if n.startswith("sweep") and n != "sweep_report"}
    for p in points:
        assert stages[p.stage]["outs"] == s(p.model_dir, p.history, layout.timing_file(p.stage))
        assert stages[p.eval_stage]["outs"] == s(p.point, p.kl_per_dim, layout.timing_file(p.eval_stage))
        assert s(p.model_dir) <= stages[p.eval_stage]["deps"]
        assert p.model.parent == p.model_dir and p.point.parent.parent == Path("metrics/sweep")
        # Adding a beta or a seed to a list must not retrain the others.
        assert not any(q.startswith(("sweep.betas", "sweep.spread")) or q == "sweep" for q in stages[p.stage]["params"])
    assert len({p.model_dir for p in points}) == len(points)
    assert stages["sweep_report"]["outs"] == s(layout.SWEEP_METRICS, layout.SWEEP_POINTS, layout.SWEEP_FIGURES,
                                               layout.timing_file("sweep_report"))
    assert s("models/sweep", "metrics/sweep") <= stages["sweep_report"]["deps"]
    for tag in ("1", "2.5"):
        for seed in (0, 3):
            p = layout.ControlPaths(tag, seed)
            assert stages[p.stage]["outs"] == s(p.model_dir, p.history, layout.timing_file(p.stage))
            assert not any(q in ("control", "control.betas", "control.seeds") for q in stages[p.stage]["params"])
    assert stages["control_eval"]["outs"] == s(layout.CONTROL_METRICS, layout.CONTROL_POINTS,
                                               layout.CONTROL_FIGURES, layout.timing_file("control_eval"))
    assert str(layout.CONTROL_MODELS) in stages["control_eval"]["deps"]
    assert s(layout.SWEEP_METRICS, layout.SWEEP_FIGURES, layout.CONTROL_METRICS,
             layout.CONTROL_FIGURES) <= stages["report"]["deps"]


def test_the_layout_is_torch_free():
    code = "import sys, vaelab.layout; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def sweep_evals() -> set[str]:
    """The stages that measure a point of the β sweep or of its seed spread (with the judge) at the shipped params."""
    sweep = yaml.safe_load((REPO / "params.yaml").read_text())["sweep"]
    return ({f"sweep_eval@{b:g}" for b in sweep["betas"]}
            | {f"sweep_seed_eval@{b:g}-{s}" for b in sweep["spread_betas"] for s in sweep["spread_seeds"]})


def stages_depending_on(stages: dict, path: str) -> set[str]:
    return {name for name, spec in stages.items() if path in spec["deps"]}


def test_each_architecture_is_a_dependency_of_its_users_only(tmp_path):
    """Editing the audit's ResNet reruns the audit and what scores with it, never a VAE or another classifier;
    editing the judge's network likewise; the feature network's module is the only one train depends on."""
    stages = resolved_stages(copy_with_betas(tmp_path, [1, 5]))
    per_beta = lambda name: {f"{name}@1", f"{name}@5"}  # noqa: E731
    assert stages_depending_on(stages, "src/vaelab/resnet.py") == {"audit", "reference"} | per_beta("evaluate")
    # The judge also measures every point of the β sweep, and labels the sampler draws of the class interpolation.
    assert stages_depending_on(stages, "src/vaelab/airbench.py") == ({"judge", "reference"} | per_beta("evaluate")
                                                                     | per_beta("figures") | sweep_evals())
    assert stages_depending_on(stages, "src/vaelab/vgg.py") == {"features", "timings"} | per_beta("train")
    # The shared parts of the three networks are the classifiers' own, the VAE's feature network's and the scorers'.
    assert "src/vaelab/classifier.py" not in set().union(*(stages[f"train@{b}"]["deps"] for b in (1, 5)))


def test_evaluation_settings_retrain_no_classifier(tmp_path):
    stages = resolved_stages(copy_with_betas(tmp_path, [1, 5]))
    for role in CLASSIFIERS:
        params = stages[role]["params"]
        assert not any(p == "evaluate" or p.startswith("evaluate.") for p in params), (role, params)
        assert params >= {role, "seed", "data.subset"}
    assert {p for p in stages["reference"]["params"] if p.startswith("evaluate")} == {
        "evaluate.n_samples", "evaluate.kid_subsets", "evaluate.kid_subset_size"}


def test_only_train_loads_the_feature_network_and_only_the_scoring_stages_load_the_scorers(tmp_path):
    stages = resolved_stages(copy_with_betas(tmp_path, [1, 5]))
    assert stages_depending_on(stages, "models/features") == {"train@1", "train@5"}
    assert stages_depending_on(stages, "models/judge") == ({"reference", "evaluate@1", "evaluate@5", "figures@1",
                                                             "figures@5"} | sweep_evals())
    assert stages_depending_on(stages, "models/audit") == {"reference", "evaluate@1", "evaluate@5"}
    for role in CLASSIFIERS:  # the classifiers train on data alone
        assert not [d for d in stages[role]["deps"] if d.startswith("models/")], role
