"""DVC stage `download`: make data/cifar-10-batches-py from a local copy or the official URL, verified."""
from __future__ import annotations

import sys
from pathlib import Path

from vaelab import data
from vaelab.params import ParamsError, load_params
from vaelab.layout import BATCHES, PARAMS_FILE
from vaelab.stages import runtime


def main() -> int:
    try:
        p = load_params(PARAMS_FILE).data
        origin = data.prepare([Path(s) for s in p.sources], p.url, p.md5, Path(p.root) / BATCHES,
                              timeout_s=p.download_timeout_s)
    except (ParamsError, data.DatasetError) as e:
        print(f"download: {e}", file=sys.stderr)
        return 1
    print(f"download: CIFAR-10 ready in {Path(p.root) / BATCHES} (from {origin})")
    return runtime.finish("download", 0)


if __name__ == "__main__":
    sys.exit(main())
