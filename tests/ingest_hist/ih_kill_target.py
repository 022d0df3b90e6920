"""`python kill_target.py <microstructure CLI args>`: the CLI, with the stand-in writer while the real one is absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("microstructure.ingest.writer") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ih_standin_writer

    sys.modules["microstructure.ingest.writer"] = ih_standin_writer

from microstructure.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
