"""Historical aggregate-trade load vs a bare binary COPY of the same rows into the same table.

    python bench/bench_historical.py [--days 3] [--trades-per-day 2500000] [--symbol BTCUSDT]

The local exchange (its own process) serves `--days` complete BTCUSDT-like days of daily aggTrades
archives (generated once per seed, cached under --cache-dir). Its clock starts just after midnight,
so the run is the archive path alone: download, sha256 check, streamed unzip, pyarrow CSV parse,
sort and de-duplicate by id, binary COPY through the writer (staging + idempotent merge, or the
direct COPY when the id range is empty) with coverage and gap bookkeeping.

The bound, in the same run and on the same database: the stored rows are read back into Arrow,
the table is truncated, and the same rows are binary-COPYed straight into agg_trades (the
project's vectorised encoder + asyncpg's copy_to_table, one COPY per 500,000 rows). The ratio is
end-to-end rows/s over bound rows/s (target: at least 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_archive_args, archive_exchange, database, fetch_daily_archive, stop_database


def read_back(dsn: str, symbol: str):  # type: ignore[no-untyped-def]
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT agg_id, (extract(epoch FROM ts) * 1000)::bigint AS ts_ms, price, quantity, first_trade_id, "
            "last_trade_id, is_buyer_maker, NULL::bigint AS recv_ms FROM agg_trades WHERE symbol = $1 ORDER BY agg_id",
            parameters=(symbol,),
        )
        return cur.fetch_arrow_table()


async def bare_copy(dsn: str, symbol: str, table) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import asyncpg
    import pyarrow as pa

    from microstructure.ingest.sink.pgcopy import encode_copy_binary
    from microstructure.ingest.sink.writer import SPECS, conform

    spec = SPECS["agg_trades"]
    table = conform("agg_trades", table)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE agg_trades")
        encode_s = copy_s = 0.0
        step = 500_000
        for lo in range(0, table.num_rows, step):
            part = table.slice(lo, step)
            part = part.append_column("__symbol", pa.array([symbol] * part.num_rows, pa.string()))
            t0 = time.perf_counter()
            payload = encode_copy_binary(part, list(spec.copy_columns))
            t1 = time.perf_counter()
            await conn.copy_to_table(
                "agg_trades", source=io.BytesIO(payload), format="binary", columns=list(spec.db_columns)
            )
            t2 = time.perf_counter()
            encode_s += t1 - t0
            copy_s += t2 - t1
        (n,) = await conn.fetchrow("SELECT count(*) FROM agg_trades")
    finally:
        await conn.close()
    return {"rows": n, "encode_s": encode_s, "copy_s": copy_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_args(p, days=3)
    args = p.parse_args()

    from microstructure.config import Settings
    from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = None
        with archive_exchange(args) as (base, days):
            first, last = days[0], days[-1]
            try:
                dsn, server = database(tmp)
                settings = Settings(database_url=dsn, home=tmp / "home")
                settings.point_at_exchange(base)
                # Warm the exchange's archive cache (generation is the exchange's cost, not ours).
                for k in range(args.days):
                    fetch_daily_archive(base, args.symbol, first + timedelta(days=k), timeout=600)
                c0, t0 = time.process_time(), time.perf_counter()
                report = asyncio.run(
                    collect_aggtrades_historical(
                        settings, dsn, [args.symbol], first, last, progress=False, use_monthly=False
                    )
                )
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if not report.ok:
                    print("\n".join(report.summary_lines()))
                    return 1
                table = read_back(dsn, args.symbol)
                rows = table.num_rows
                bound = asyncio.run(bare_copy(dsn, args.symbol, table))
            finally:
                stop_database(server)
    assert bound["rows"] == rows
    e2e = rows / wall
    bare = rows / bound["copy_s"]
    bare_enc = rows / (bound["copy_s"] + bound["encode_s"])
    print(f"{args.days} days of {args.symbol}, {rows:,} aggregate trades ({rows / args.days:,.0f} a day)")
    print(f"historical load, end to end: {wall:.1f} s = {e2e:,.0f} rows/s (collector CPU {cpu:.1f} s)")
    print(f"bare binary COPY of the same rows: {bound['copy_s']:.1f} s = {bare:,.0f} rows/s "
          f"(+ encoding {bound['encode_s']:.1f} s = {bare_enc:,.0f} rows/s)")  # fmt: skip
    print(f"ratio end to end / bare COPY: {e2e / bare:.2f}   (/ encode + COPY: {e2e / bare_enc:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
