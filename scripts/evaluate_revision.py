"""Evaluate the models of an earlier git revision with today's judge, audit network and evaluation code, beside
today's models: the same yardstick for both.

    python scripts/evaluate_revision.py REV [--betas 1 5] [--out /tmp/vaelab-rev]

The revision's `dvc.lock` names its models (train@<β>) and samplers (sampler@<β>); their files are copied out of
this repository's DVC cache (so they must still be there: `dvc gc` removes them) into --out, evaluated by the
evaluate stage's own code with today's params.yaml, judge and audit, and logged to a separate MLflow store under
--out (the revision's own runs are left as they were). Prints one table per β: the revision's numbers, today's
(metrics/beta_<β>/eval.json) and the direction, named only where the 95% intervals separate.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from vaelab.intervals import direction
from vaelab.params import load_params
from vaelab.stages import evaluate, layout

KEYS = (("sampler_fcd", "sampler FCD (judge)"), ("audit_sampler_fcd", "sampler FCD (audit)"),
        ("sampler_sharpness_ratio", "sampler sharpness"), ("sampler_judge_confidence", "sampler judge confidence"),
        ("sampler_class_entropy", "sampler class entropy (bits)"), ("fcd", "N(0, I) FCD (judge)"),
        ("audit_fcd", "N(0, I) FCD (audit)"), ("recon_fcd", "reconstruction FCD (judge)"),
        ("audit_recon_fcd", "reconstruction FCD (audit)"), ("recon_sharpness_ratio", "reconstruction sharpness"),
        ("recon_judge_accuracy", "judge accuracy on reconstructions"), ("test_bpd", "test bits/dim"),
        ("test_psnr", "PSNR (dB)"), ("rate_nats", "rate (nats)"), ("total_correlation", "Gaussian TC (nats)"))


def cached_dir(md5: str) -> list[dict]:
    """The file list of a directory output in the DVC cache."""
    path = Path(".dvc/cache/files/md5") / md5[:2] / md5[2:]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the DVC cache (removed by dvc gc?)")
    return json.loads(path.read_text())


def restore(md5: str, dest: Path) -> None:
    """Copy a cached directory output into dest."""
    for entry in cached_dir(md5):
        src = Path(".dvc/cache/files/md5") / entry["md5"][:2] / entry["md5"][2:]
        (dest / entry["relpath"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / entry["relpath"])


def out_md5(lock: dict, stage: str, path: str) -> str:
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def cell(r: dict, key: str) -> str:
    if key not in r:
        return "–"
    if f"{key}_lo" in r:
        return f"{r[key]:.3f} [{r[key + '_lo']:.3f}, {r[key + '_hi']:.3f}]"
    return f"{r[key]:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev")
    ap.add_argument("--betas", nargs="+", default=["1", "5"])
    ap.add_argument("--out", default="/tmp/vaelab-rev")
    args = ap.parse_args()
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{args.rev}:dvc.lock"], capture_output=True, text=True,
                                         check=True).stdout)
    params = load_params(layout.PARAMS_FILE)
    root = Path(args.out)
    for tag in args.betas:
        paths = layout.BetaPaths(tag, root)
        restore(out_md5(lock, f"train@{tag}", f"models/beta_{tag}"), paths.model_dir)
        restore(out_md5(lock, f"sampler@{tag}", f"models/sampler/beta_{tag}"), paths.sampler_dir)
        # A store of its own: the revision's runs in mlflow.db stay as they were.
        paths.run_file.write_text(json.dumps({"run_id": None, "run_name": f"{args.rev}/beta={tag}",
                                              "tracking_uri": f"sqlite:///{root.resolve()}/mlflow.db",
                                              "experiment": "evaluate-revision"}))
        if evaluate.run(params, float(tag), paths) != 0:
            return 1
        old = json.loads(paths.eval_metrics.read_text())
        new = json.loads(layout.BetaPaths(tag).eval_metrics.read_text())
        print(f"\nβ = {tag}: {args.rev} against today's metrics/beta_{tag}/eval.json\n")
        print(f"| metric | {args.rev} | today | today against {args.rev} |\n|---|---|---|---|")
        for key, name in KEYS:
            verdict = direction(old, new, key) if all(f"{key}{e}" in r for r in (old, new)
                                                         for e in ("", "_lo", "_hi")) else "–"
            print(f"| {name} | {cell(old, key)} | {cell(new, key)} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
