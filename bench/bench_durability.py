"""What synchronous_commit costs the writer, on and off in the same run (embedded PostgreSQL).

    python bench/bench_durability.py [--batches 2000] [--rows 50]

Live-sized batches (the live writer commits a few times a second per kind and symbol) and
bulk-sized ones (a historical load commits per 250,000 rows), each written by write_batch with the
session's synchronous_commit on, then off. The embedded server's default is on.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_features import trade_batch  # noqa: E402
from common import database, stop_database  # noqa: E402

from microstructure.ingest.sink.writer import write_batch  # noqa: E402


async def run(dsn: str, batches: int, rows: int) -> None:
    rng = np.random.default_rng(1)
    next_id = 1
    print(f"{'synchronous_commit':>18} {'batch rows':>10} {'commits/s':>10} {'rows/s':>12}")
    for size, n in ((rows, batches), (250_000, 8)):
        for mode in ("on", "off"):
            conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": mode})
            tables = [
                trade_batch(rng, size, 1_772_323_200_000 + next_id, 60_000, next_id + i * size)
                for i in range(n)
            ]
            next_id += n * size
            t = time.perf_counter()
            for tb in tables:
                await write_batch(conn, "agg_trades", "BTCUSDT", tb)
            s = time.perf_counter() - t
            await conn.close()
            print(f"{mode:>18} {size:>10,} {n / s:>10,.0f} {n * size / s:>12,.0f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--rows", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dsn, server = database(Path(tmp))
        try:
            asyncio.run(run(dsn, args.batches, args.rows))
        finally:
            stop_database(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
