"""Run `collect book-depth|market|all` in a subprocess (the stand-in writer while the real one is absent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if importlib.util.find_spec("microstructure.ingest.writer") is None:
    import ib_standin_writer

    from microstructure.ingest import book

    book.writer_class = lambda: ib_standin_writer.Writer

from microstructure.ingest.cli_market import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
