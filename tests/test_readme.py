"""The README shows real command output: its `dvc dag --md` and `dvc metrics show --md` blocks match the
commands run on this repository, so they cannot go stale silently."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()


def _block(command: str) -> str:
    m = re.search(rf"<!-- {re.escape(command)} -->\n(.*?)\n<!-- /{re.escape(command)} -->", README, re.S)
    assert m, f"README has no block marked <!-- {command} -->"
    return m.group(1).strip()


@pytest.mark.parametrize("command", ["dvc dag --md", "dvc metrics show --md"])
def test_readme_block_is_the_commands_output(command):
    out = subprocess.run(command.split(), cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert _block(command) == out, f"README's `{command}` block is stale: paste the command's output"


def test_readme_commands_match_ci():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pip install -r requirements.txt && python -m pytest" in ci
    assert "python -m pytest -m browser" in ci
    assert "pip install -r requirements.txt && python -m pytest && python -m pytest -m browser" in README
    assert "pip install -r requirements.txt && dvc repro" in README
