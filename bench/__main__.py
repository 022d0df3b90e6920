"""`python -m bench` (`make bench`): every benchmark with the arguments BENCHMARKS.md quotes.

Runs them one after another, each in its own process, and prints their reports. Takes several
minutes (the first run also generates and caches the exchange's BTCUSDT-like archive days).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS = [
    ["bench_exchange.py", "--trades-per-day", "2500000", "--live-rate", "3000", "--seconds", "10"],
    ["bench_historical.py", "--days", "3", "--trades-per-day", "2500000"],
    [
        "bench_bulk_load.py",
        "--days",
        "3",
        "--trades-per-day",
        "2500000",
        "--paths",
        "new,flat",
        "--one-call",
        "--rounds",
        "3",
    ],
    ["bench_load_day.py", "--rounds", "5"],
    ["bench_backfill.py", "--days", "3", "--trades-per-day", "2500000", "--rounds", "3"],
    ["bench_live.py", "--symbols", "2", "--live-rate", "3000", "--seconds", "60"],
    ["bench_live.py", "--symbol-sets", "2,30,100,300", "--total-rate", "3000", "--seconds", "20"],
    ["bench_market.py", "--universe", "300", "--universe-rate", "5000", "--seconds", "120"],
    ["bench_collect_all.py", "--symbols", "10", "--seconds", "15"],
    ["bench_collect_all.py", "--symbols", "10", "--seconds", "15", "--book-source", "diff"],
    ["bench_collect_all.py", "--hot-path"],
    ["bench_features.py", "--trades", "2500000", "--snapshots", "172800", "--marks", "86400"],
    ["bench_export.py", "--days", "3", "--trades-per-day", "2500000", "--pull-days", "90"],
    ["bench_durability.py", "--batches", "2000", "--rows", "50"],
]


def main() -> int:
    failed = 0
    for run in RUNS:
        print(f"\n$ python bench/{' '.join(run)}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / run[0]), *run[1:]]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
