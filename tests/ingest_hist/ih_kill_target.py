"""`python ih_kill_target.py <microstructure CLI args>`: the CLI in a process the test can SIGKILL."""

from __future__ import annotations

import sys

from microstructure.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
