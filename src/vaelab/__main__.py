"""`python -m vaelab`: the command line (see vaelab.cli)."""
import sys

from vaelab.cli import main

sys.exit(main())
