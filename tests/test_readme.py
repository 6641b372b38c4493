"""The README leads a newcomer with commands that work: its `dvc dag --md` block matches the command run on this
repository, and its two commands are the ones CI and a user run."""
from __future__ import annotations

import re
import subprocess

from conftest import REPO

README = (REPO / "README.md").read_text()


def _block(command: str) -> str:
    m = re.search(rf"<!-- {re.escape(command)} -->\n(.*?)\n<!-- /{re.escape(command)} -->", README, re.S)
    assert m, f"README has no block marked <!-- {command} -->"
    return m.group(1).strip()


def test_readme_dag_is_the_commands_output():
    out = subprocess.run(["dvc", "dag", "--md"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert _block("dvc dag --md") == out, "README's `dvc dag --md` block is stale: paste the command's output"


def test_readme_commands_match_ci():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pip install -r requirements.txt && python -m pytest && python -m pytest -m slow && " \
           "python -m pytest -m browser" in ci
    assert "bash .ci/run" in README
    assert "pip install -r requirements.txt && dvc repro" in README


def test_readme_links_resolve():
    for link in re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", README):
        assert (REPO / link).exists(), f"README links to {link}, which is not in the repository"
