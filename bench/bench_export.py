"""Parquet export against a bare pyarrow write of the same rows, and the feature pull, in one run.

    python bench/bench_export.py [--days 3] [--trades-per-day 2500000] [--pull-days 90]

1. `--days` BTCUSDT-like days of aggregate trades written through the real writer; then, timed:
   - `export --type aggtrades` into an empty folder (ADBC read, hourly files, hashes, manifests);
   - the bare write: the same rows, already in one Arrow table in memory, written by
     pyarrow.parquet.write_table as the same hourly Snappy files (no database, no hashing);
   - the re-export, which finds every hour unchanged.
   Target (issue 28): the export's rows/s >= 0.6 of the bare write's (measured in the same run).
   `--pull-days 0` skips part 2.
2. `--pull-days` days of 1m bars (light trades, marks and snapshots) refreshed and exported as
   features_1m; then pull_features with indicators for all of it, from Parquet and from the database.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_features import book_batch, mark_batch, trade_batch  # noqa: E402
from common import database, stop_database  # noqa: E402

from microstructure.export import pull_features  # noqa: E402
from microstructure.export.exporter import export_once, read_rows  # noqa: E402
from microstructure.export.partitions import hour_path  # noqa: E402
from microstructure.export.types import TYPES  # noqa: E402
from microstructure.features_sql.refresher import refresh_pending  # noqa: E402
from microstructure.ingest.sink.writer import write_batch  # noqa: E402

DAY_MS = 86_400_000
DAY0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


async def load_trades(dsn: str, symbol: str, days: int, per_day: int, day0: int) -> None:
    rng = np.random.default_rng(7)
    conn = await asyncpg.connect(dsn)
    try:
        next_id = 1
        for d in range(days):
            t = trade_batch(rng, per_day, day0 + d * DAY_MS, DAY_MS, next_id)
            next_id += per_day
            for i in range(0, t.num_rows, 250_000):
                await write_batch(conn, "agg_trades", symbol, t.slice(i, 250_000))
    finally:
        await conn.close()


async def load_bars(dsn: str, symbol: str, days: int, day0: int) -> None:
    """Light raw data for `days` of 1m bars: 2 trades, 2 snapshots and 6 marks a minute."""
    rng = np.random.default_rng(9)
    conn = await asyncpg.connect(dsn)
    try:
        for d in range(days):
            t0 = day0 + d * DAY_MS
            await write_batch(conn, "agg_trades", symbol, trade_batch(rng, 2880, t0, DAY_MS, 1 + d * 2880))
            snaps = book_batch(rng, 2880, t0)
            snaps = snaps.set_column(0, "ts_ms", pa.array(t0 + 30_000 * np.arange(2880, dtype=np.int64)))
            await write_batch(conn, "book_snapshots", symbol, snaps)
            marks = mark_batch(rng, 8640, t0)
            marks = marks.set_column(0, "ts_ms", pa.array(t0 + 10_000 * np.arange(8640, dtype=np.int64)))
            await write_batch(conn, "mark_prices", symbol, marks)
        await refresh_pending(conn)
    finally:
        await conn.close()


def bare_write(table: pa.Table, root: Path) -> None:
    hours = pc.divide(table.column("timestamp"), pa.scalar(3_600_000, pa.int64())).to_numpy()
    cuts = np.r_[0, np.flatnonzero(np.diff(hours)) + 1, len(hours)]
    for a, b in itertools.pairwise(cuts):
        h = datetime.fromtimestamp(int(hours[a]) * 3600, tz=UTC)
        path = hour_path(root, "aggtrades", "BTCUSDT", h)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(int(a), int(b - a)), path, compression="snappy", row_group_size=1 << 20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--trades-per-day", type=int, default=2_500_000)
    p.add_argument("--pull-days", type=int, default=90)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dsn, server = database(tmp)
        try:
            t = time.perf_counter()
            asyncio.run(load_trades(dsn, "BTCUSDT", args.days, args.trades_per_day, DAY0))
            rows = args.days * args.trades_per_day
            print(f"loaded {rows:,} trades over {args.days} days in {time.perf_counter() - t:.0f} s")
            t = time.perf_counter()
            rep = export_once(dsn, tmp / "export", types=["aggtrades"])
            export_s = time.perf_counter() - t
            t = time.perf_counter()
            again = export_once(dsn, tmp / "export", types=["aggtrades"], start=datetime.fromtimestamp(DAY0 / 1000, UTC),
                                end=datetime.fromtimestamp((DAY0 + args.days * DAY_MS) / 1000, UTC))  # fmt: skip
            reexport_s = time.perf_counter() - t
            table = read_rows(dsn, TYPES["aggtrades"], "BTCUSDT", datetime.fromtimestamp(DAY0 / 1000, UTC),
                              datetime.fromtimestamp((DAY0 + args.days * DAY_MS) / 1000, UTC))  # fmt: skip
            t = time.perf_counter()
            bare_write(table, tmp / "bare")
            bare_s = time.perf_counter() - t
            print(
                f"export aggtrades: {rep.files_written} files, {export_s:.1f} s = {rows / export_s:,.0f} rows/s"
            )
            print(
                f"bare pyarrow write of the same rows (from memory): {bare_s:.1f} s = {rows / bare_s:,.0f} rows/s"
            )
            print(f"ratio export / bare write: {bare_s / export_s:.2f} (target >= 0.6, issue 28)")
            print(
                f"re-export of the same range, every hour unchanged: {reexport_s:.1f} s, {again.files_written} written"
            )

            if not args.pull_days:
                return 0
            t = time.perf_counter()
            day0 = DAY0 - args.pull_days * DAY_MS
            asyncio.run(load_bars(dsn, "ETHUSDT", args.pull_days, day0))
            print(
                f"\nloaded and refreshed {args.pull_days} days of light data in {time.perf_counter() - t:.0f} s"
            )
            t = time.perf_counter()
            export_once(dsn, tmp / "export", types=["features_1m"], symbols=["ETHUSDT"])
            print(f"export features_1m, {args.pull_days} days: {time.perf_counter() - t:.1f} s")
            lo = datetime.fromtimestamp(day0 / 1000, UTC) + timedelta(hours=6)
            hi = datetime.fromtimestamp(DAY0 / 1000, UTC)
            for source in ("parquet", "db"):
                t = time.perf_counter()
                df = pull_features("ETHUSDT", lo, hi, "1m", source=source, dsn=dsn, data_dir=tmp / "export")
                print(f"pull_features 1m with indicators from {source}: {len(df):,} bars x {len(df.columns)} columns "
                      f"in {time.perf_counter() - t:.1f} s")  # fmt: skip
        finally:
            stop_database(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
