"""DVC stage `notebook`: the hand-in. Executes notebooks/beta_vae_cifar10.ipynb headless (nbclient) against the
run just made, with RUN = "none" (it reads the pipeline's outputs and trains nothing), and writes the executed copy,
every output embedded, to reports/beta_vae_cifar10.ipynb (committed, so the repository page shows it)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from vaelab import layout, storage
from vaelab.stages import runtime

RUN_LINE = re.compile(r'^RUN = "[a-z]+"', re.MULTILINE)


def execute(source: Path, repo: Path, timeout_s: int = 900) -> nbformat.NotebookNode:
    """The notebook at `source` executed in `repo` with its parameters cell set to RUN = "none"; raises
    CellExecutionError naming the failing cell."""
    nb = nbformat.read(source, as_version=4)
    params = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if params is None or not RUN_LINE.search(params.source):
        raise ValueError(f"{source} has no parameters cell setting RUN")
    params.source = RUN_LINE.sub('RUN = "none"', params.source)  # the run is already there
    # record_timing off and no kernel start time: the same run gives the same bytes (DVC sees no change).
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(repo)}}).execute()  # the kernel starts in the checkout
    return nb


def main() -> int:
    runtime.load("notebook")  # params.yaml must be valid: the notebook reads it
    repo = layout.repo_root()
    try:
        nb = execute(repo / layout.NOTEBOOK, repo)
    except (CellExecutionError, ValueError) as e:
        print(f"notebook: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    missing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip() and not c.outputs]
    if missing:
        print(f"notebook: code cells {missing} gave no output", file=sys.stderr)
        return 1
    storage.write_text(layout.NOTEBOOK_EXECUTED, nbformat.writes(nb) + "\n")
    print(f"notebook: executed {layout.NOTEBOOK} into {layout.NOTEBOOK_EXECUTED}")
    return runtime.finish("notebook", 0)


if __name__ == "__main__":
    sys.exit(main())
