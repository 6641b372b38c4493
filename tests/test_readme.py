"""The README leads a newcomer with commands that work: the `dvc dag --md` block of docs/pipeline.md matches the
command run on this repository, and the README's two commands are the ones CI and a user run."""
from __future__ import annotations

import re
import subprocess

from conftest import REPO

README = (REPO / "README.md").read_text()


PIPELINE_DOC = (REPO / "docs" / "pipeline.md").read_text()


def _block(command: str, text: str = README) -> str:
    m = re.search(rf"<!-- {re.escape(command)} -->\n(.*?)\n<!-- /{re.escape(command)} -->", text, re.S)
    assert m, f"no block marked <!-- {command} -->"
    return m.group(1).strip()


def test_the_documented_dag_is_the_commands_output():
    out = subprocess.run(["dvc", "dag", "--md"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert _block("dvc dag --md", PIPELINE_DOC) == out, \
        "docs/pipeline.md's `dvc dag --md` block is stale: paste the command's output"


def test_readme_commands_match_ci():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'python -m pip install -r requirements.txt && python -m pytest && python -m pytest -m "slow or browser"' \
        in ci
    assert "bash .ci/run" in README
    assert "pip install -r requirements.txt && dvc repro" in README


def test_readme_links_resolve():
    for link in re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", README):
        assert (REPO / link).exists(), f"README links to {link}, which is not in the repository"
