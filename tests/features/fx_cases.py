"""Hand-made raw rows for the feature tests, each there for an edge rule of FEATURES.md.

Written through the real writer (`write_batch`: binary COPY, merge, the invalidation log, the OFI
term against the stored previous snapshot), so the refresher sees what collectors would write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.ingest.collectors.book import snapshots_table
from microstructure.ingest.collectors.book_values import BookValues
from microstructure.ingest.records import SnapshotRow
from microstructure.ingest.sink.writer import write_batch

MIN = 60_000
# 23:50 UTC: the cases run across midnight (cvd restarts at 00:00)
T0 = int(datetime(2026, 3, 1, 23, 50, tzinfo=UTC).timestamp() * 1000)
MIDNIGHT = T0 + 10 * MIN
SYM = "AAAUSDT"
OTHER = "BBBUSDT"


def trades(rows: list[tuple[int, int, float, float, bool]], first_fill: int = 0) -> pa.Table:
    """(agg_id, ts_ms, price, qty, is_buyer_maker) -> an AGG_TRADES batch (one fill each, or two)."""
    ids = [r[0] for r in rows]
    return pa.table(
        {
            "agg_id": pa.array(ids, pa.int64()),
            "ts_ms": pa.array([r[1] for r in rows], pa.int64()),
            "price": pa.array([r[2] for r in rows], pa.float64()),
            "quantity": pa.array([r[3] for r in rows], pa.float64()),
            "first_trade_id": pa.array([first_fill + 10 * i for i in ids], pa.int64()),
            "last_trade_id": pa.array([first_fill + 10 * i + (i % 3) for i in ids], pa.int64()),
            "is_buyer_maker": pa.array([r[4] for r in rows], pa.bool_()),
        }
    )


def snapshots(rows: list[tuple[int, int, list, list]], values: BookValues, symbol: str) -> pa.Table:
    """(ts_ms, update_id, bids, asks) -> a BOOK_SNAPSHOTS batch with the collector's per-snapshot values."""
    snaps = [SnapshotRow(t, t, u - 1, u, u - 2, b, a, None) for t, u, b, a in rows]
    return snapshots_table(snaps, "depth20", lambda bp, bq, ap, aq: values.compute(symbol, bp, bq, ap, aq))


def book_levels(rng: np.random.Generator, mid: float, n_bid: int = 20, n_ask: int = 20) -> tuple[list, list]:
    bids = [[round(mid - 0.05 - 0.1 * i, 2), float(rng.integers(1, 50))] for i in range(n_bid)]
    asks = [[round(mid + 0.05 + 0.1 * i, 2), float(rng.integers(1, 50))] for i in range(n_ask)]
    return bids, asks


def marks(rows: list[tuple[int, float, float | None, float | None]]) -> pa.Table:
    return pa.table(
        {
            "ts_ms": pa.array([r[0] for r in rows], pa.int64()),
            "mark_price": pa.array([r[1] for r in rows], pa.float64()),
            "index_price": pa.array([r[2] for r in rows], pa.float64()),
            "funding_rate": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


def funding(rows: list[tuple[int, float]]) -> pa.Table:
    return pa.table(
        {
            "funding_ms": pa.array([r[0] for r in rows], pa.int64()),
            "funding_rate": pa.array([r[1] for r in rows], pa.float64()),
        }
    )


def open_interest(rows: list[tuple[int, float]]) -> pa.Table:
    return pa.table(
        {
            "ts_ms": pa.array([r[0] for r in rows], pa.int64()),
            "open_interest": pa.array([r[1] for r in rows], pa.float64()),
            "source": pa.array(["rest"] * len(rows), pa.string()),
        }
    )


def liquidations(rows: list[tuple[int, str, float]]) -> pa.Table:
    return pa.table(
        {
            "ts_ms": pa.array([r[0] for r in rows], pa.int64()),
            "trade_ms": pa.array([r[0] for r in rows], pa.int64()),
            "side": pa.array([r[1] for r in rows], pa.string()),
            "quantity": pa.array([r[2] for r in rows], pa.float64()),
            "price": pa.array([100.0] * len(rows), pa.float64()),
        }
    )


async def write_cases(dsn: str) -> dict[str, Any]:
    """The hand-made rows; returns the late trade (held back) and a few times the tests name."""
    rng = np.random.default_rng(7)
    conn = await asyncpg.connect(dsn)
    try:
        # -- trades: a busy minute 23:50, nothing at 23:51 (an empty minute: no bar unless other rows),
        #    one exactly on the 23:55:00 edge, one exactly at midnight, large trades by notional
        #    (agg id 20 is held back: the late row a REST gap fill brings after a refresh)
        t: list[tuple[int, int, float, float, bool]] = []
        i = 1
        for k in range(40):  # 23:50:00..23:50:39, 1 or 3 trades a second
            for _ in range(3 if k % 7 == 0 else 1):
                t.append((i, T0 + k * 1000 + (i % 5) * 10, 100 + 0.01 * i, 1.0 + i % 4, i % 3 == 0))
                i += 1
        late = t.pop(19)
        t.append((i, T0 + 5 * MIN, 101.0, 2000.0, False))  # on the 23:55 edge; notional 202,000: large
        i += 1
        for k in range(6):
            t.append((i, T0 + 5 * MIN + 20_000 + k * 3000, 101.5, 0.5, True))  # sells only after
            i += 1
        t.append((i, MIDNIGHT, 102.0, 3.0, False))  # exactly 00:00:00.000: the new day's first bar
        i += 1
        for k in range(5):
            t.append((i, MIDNIGHT + 30_000 + k * 100, 102.0 + k, 1.0, k % 2 == 1))
            i += 1
        await write_batch(conn, "agg_trades", SYM, trades(t))
        # the other symbol: few trades, a lower large-trade threshold set later by a test
        await write_batch(
            conn,
            "agg_trades",
            OTHER,
            trades([(1, T0 + 1000, 50.0, 10.0, False), (2, T0 + 2000, 50.0, 1.0, True)]),
        )

        # -- book: 23:50 normal snapshots; 23:52 ONE snapshot; 23:53 asks with 3 levels, then an
        #    empty ask side (imbalance +1); equal mids around for OFI
        values = BookValues()
        rows: list[tuple[int, int, list, list]] = []
        u = 1000
        for k in range(20):
            bids, asks = book_levels(rng, 100 + 0.1 * (k % 3))
            rows.append((T0 + 500 * k, u, bids, asks))
            u += 3
        await write_batch(conn, "book_snapshots", SYM, snapshots(rows, values, SYM))
        bids, asks = book_levels(rng, 100.2)
        await write_batch(
            conn, "book_snapshots", SYM, snapshots([(T0 + 2 * MIN + 1234, u, bids, asks)], values, SYM)
        )
        u += 5
        rows = []
        for k in range(6):
            bids, asks = book_levels(rng, 100.3, n_ask=3 if k < 4 else 0)
            rows.append((T0 + 3 * MIN + 500 * k, u, bids, asks))
            u += 2
        await write_batch(conn, "book_snapshots", SYM, snapshots(rows, values, SYM))

        # -- market: mark prices with and without index / r in 23:50..23:51; none later, so later
        #    bars take funding from settled rates only
        m = []
        for k in range(90):
            idx = None if k % 10 == 3 else (0.0 if k % 10 == 4 else 100.0 + 0.001 * k)
            r = 0.0001 * (1 + k % 4) if k % 5 else None
            m.append((T0 + 1000 * k, 100.01 + 0.001 * k, idx, r))
        await write_batch(conn, "mark_prices", SYM, marks(m))
        await write_batch(
            conn, "funding_rates", SYM, funding([(T0 - 8 * 3600_000, 0.0002), (MIDNIGHT, 0.0005)])
        )
        await write_batch(conn, "funding_rates", OTHER, funding([(T0 - 3600_000, -0.0001)]))

        # -- open interest: at 23:50:30 and exactly at 23:56:00; carried over the quiet bars between
        await write_batch(
            conn, "open_interest", SYM, open_interest([(T0 + 30_000, 12_000.0), (T0 + 6 * MIN, 12_600.0)])
        )
        await write_batch(
            conn, "open_interest", OTHER, open_interest([(T0 + 500, 0.0), (T0 + 4 * MIN, 10.0)])
        )

        # -- liquidations: 23:54 longs only (SELL), 23:57 both sides
        await write_batch(
            conn, "liquidations", SYM,
            liquidations([(T0 + 4 * MIN + 100, "SELL", 1.5), (T0 + 4 * MIN + 2100, "SELL", 2.5),
                          (T0 + 7 * MIN, "BUY", 1.0), (T0 + 7 * MIN + 1000, "SELL", 3.0)]),
        )  # fmt: skip
    finally:
        await conn.close()
    return {"t0": T0, "midnight": MIDNIGHT, "late": late}
