"""`python ib_run_cli.py <collect args>`: `collect book-depth|market|all` in a subprocess."""

from __future__ import annotations

import sys

from microstructure.ingest.cli_market import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
