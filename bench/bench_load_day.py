"""One day of aggregate trades through the bulk path alone (`sink/bulk.py`'s `load_day`), by phase.

    python bench/bench_load_day.py [--rounds 5] [--trades-per-day 2500000] [--seed 1]

The local exchange (its own process) serves one BTCUSDT-like daily aggTrades archive (generated once
per seed, cached under --cache-dir); it is downloaded and parsed once, before timing. Each round
loads the parsed day into a fresh database of the same embedded server (after a CHECKPOINT, so a
round does not pay for the one before) and reports `load_day`'s phases: the COPY FREEZE and its
commit, each index build and the span of the builds side by side, the attach transaction. What
the collector adds around it (download, sha256, unzip, parse) is bench_bulk_load.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    add_archive_args,
    archive_exchange,
    database,
    drop_database,
    fetch_daily_archive,
    stop_database,
)


async def one_round(dsn: str, symbol: str, day: object, table: object) -> dict[str, float]:
    import asyncpg

    from microstructure.ingest.sink import bulk

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CHECKPOINT")
        phases: dict[str, float] = {}
        t0 = time.perf_counter()
        stored = await bulk.load_day(pool, symbol, day, table, phases=phases)  # type: ignore[arg-type]
        phases["total"] = time.perf_counter() - t0
        if stored is None:
            raise SystemExit("the bulk path did not apply to the day")
        return phases
    finally:
        await pool.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_args(p, days=1)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    args.days = 1
    from microstructure.ingest.binance.archives import parse_aggtrades_zip

    with tempfile.TemporaryDirectory() as tmp_name, archive_exchange(args) as (base, days):
        tmp = Path(tmp_name)
        d = days[0]
        table = parse_aggtrades_zip(fetch_daily_archive(base, args.symbol, d)).table
        server = None
        runs: list[dict[str, float]] = []
        try:
            for k in range(args.rounds):
                dsn, server = database(tmp)
                runs.append(asyncio.run(one_round(dsn, args.symbol, d, table)))
                print(f"  round {k + 1}: " + ", ".join(f"{n} {v:.2f} s" for n, v in runs[-1].items()),
                      file=sys.stderr, flush=True)  # fmt: skip
                drop_database(dsn)
        finally:
            stop_database(server)
    print(f"{table.num_rows:,} rows of {args.symbol} on {d}, {args.rounds} rounds, seconds\n")
    print("| phase | median | min | max |\n| --- | --- | --- | --- |")
    for name in runs[0]:
        v = [r[name] for r in runs]
        print(f"| {name} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
