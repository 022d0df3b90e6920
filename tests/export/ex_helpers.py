"""Export tests' data: a few hours of every raw kind written through the real writer, features refreshed."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "features"))

from fx_cases import liquidations, marks, open_interest, snapshots

from microstructure.features_sql.refresher import refresh_pending
from microstructure.ingest.collectors.book_values import BookValues
from microstructure.ingest.records import BOOK_DEPTH_BANDS, FUTURES_METRICS, PRICE_KLINES
from microstructure.ingest.sink.writer import merge_table, write_batch

T0 = int(datetime(2026, 3, 1, 20, 0, tzinfo=UTC).timestamp() * 1000)  # 20:00 UTC: hours 20..23 and 00..
HOUR_MS = 3_600_000
SYMBOLS = ("AAAUSDT", "BBBUSDT")


def trade_table(rng: np.random.Generator, ids: np.ndarray, ts: np.ndarray, base: float) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "agg_id": pa.array(ids, pa.int64()),
            "ts_ms": pa.array(ts, pa.int64()),
            "price": np.round(base + np.cumsum(rng.normal(0, 0.05, n)), 2),
            "quantity": np.round(rng.exponential(2.0, n) + 0.001, 3),
            "first_trade_id": pa.array(ids * 2, pa.int64()),
            "last_trade_id": pa.array(ids * 2 + (ids % 3), pa.int64()),
            "is_buyer_maker": rng.random(n) < 0.5,
        }
    )


async def write_hours(
    dsn: str, hours: int = 6, trades_per_hour: int = 3000, hold_back: int | None = None
) -> dict[str, Any]:
    """`hours` hours from 20:00 of trades for both symbols, a snapshot every 5 s, marks every 2 s,
    open interest every 5 minutes, a few liquidations and settled funding; features refreshed.
    With `hold_back`, that trade id of the first symbol is kept out (a late row for later)."""
    rng = np.random.default_rng(11)
    conn = await asyncpg.connect(dsn)
    held = None
    try:
        for k, sym in enumerate(SYMBOLS):
            n = hours * trades_per_hour // (k + 1)
            ids = np.arange(1, n + 1, dtype=np.int64)
            ts = np.sort(T0 + rng.integers(0, hours * HOUR_MS, n))
            table = trade_table(rng, ids, ts, 100.0 * (k + 1))
            if hold_back is not None and k == 0:
                keep = ids != hold_back
                held = table.filter(pa.array(~keep))
                table = table.filter(pa.array(keep))
            for i in range(0, table.num_rows, 5000):
                await write_batch(conn, "agg_trades", sym, table.slice(i, 5000))
            values = BookValues()
            rows = []
            for j, t in enumerate(range(T0, T0 + hours * HOUR_MS, 5000)):
                mid = 100.0 * (k + 1) + 0.01 * (j % 50)
                bids = [[round(mid - 0.05 - 0.1 * i, 2), float(rng.integers(1, 40))] for i in range(20)]
                asks = [[round(mid + 0.05 + 0.1 * i, 2), float(rng.integers(1, 40))] for i in range(20)]
                rows.append((t + 7, 10 * j + 5, bids, asks))
            await write_batch(conn, "book_snapshots", sym, snapshots(rows, values, sym))
            m = [
                (t, 100.0 * (k + 1) + 0.001 * (t % 997), 100.0 * (k + 1), 0.0001)
                for t in range(T0, T0 + hours * HOUR_MS, 2000)
            ]
            await write_batch(conn, "mark_prices", sym, marks(m))
            oi = [(t, 1e4 + (t - T0) / 1e5) for t in range(T0, T0 + hours * HOUR_MS, 300_000)]
            await write_batch(conn, "open_interest", sym, open_interest(oi))
            await write_batch(
                conn,
                "liquidations",
                sym,
                liquidations(
                    [(T0 + 3_600_123 * q, "SELL" if q % 2 else "BUY", 1.0 + q) for q in range(hours)]
                ),
            )
            await write_batch(
                conn, "funding_rates", sym,
                pa.table({"funding_ms": pa.array([T0 - 4 * HOUR_MS, T0 + 4 * HOUR_MS], pa.int64()),
                          "funding_rate": pa.array([0.0001, -0.0002], pa.float64())}),
            )  # fmt: skip
            await write_archive_tables(conn, sym)
        await refresh_pending(conn)
    finally:
        await conn.close()
    return {"held": held}


async def write_archive_tables(conn: asyncpg.Connection, sym: str) -> None:
    """A few rows of each archive-only table (bookDepth bands, metrics, klines) in the first hours."""
    ts = np.arange(T0, T0 + 2 * HOUR_MS, 300_000, dtype=np.int64)
    n = len(ts)
    sy = pa.array([sym] * n)
    bands = pa.table({"symbol": pa.array([sym] * 2 * n), "ts": np.repeat(ts, 2), "percentage": np.tile([-1.0, 1.0], n),
                      "depth": np.arange(2 * n, dtype=float), "notional": np.arange(2 * n, dtype=float) * 100})  # fmt: skip
    await merge_table(conn, "book_depth_bands", bands, BOOK_DEPTH_BANDS)
    metrics = {c: np.linspace(1, 2, n) for c in FUTURES_METRICS if c not in ("symbol", "ts")}
    await merge_table(conn, "futures_metrics", pa.table({"symbol": sy, "ts": ts, **metrics}), FUTURES_METRICS)
    kl = pa.table({"symbol": sy, "kind": pa.array(["mark"] * n), "ts": ts, "open": np.ones(n), "high": np.ones(n) * 2,
                   "low": np.ones(n) / 2, "close": np.ones(n), "close_ts": ts + 59_999})  # fmt: skip
    await merge_table(conn, "price_klines", kl, PRICE_KLINES)


async def write_late(dsn: str, symbol: str, table: pa.Table) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await write_batch(conn, "agg_trades", symbol, table)
        await refresh_pending(conn)
    finally:
        await conn.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
