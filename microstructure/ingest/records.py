"""The vocabulary every part of ingest shares: Arrow schemas of the raw tables' batches, and SnapshotRow.

A batch holds rows of ONE kind for ONE symbol; the symbol travels beside the batch, not in it.
Times are int64 milliseconds since the epoch (exchange times exactly as Binance sends them);
`recv_ms` is the local receive time (null for rows that did not come live).
`SnapshotRow` is one order book snapshot before it joins a BOOK_SNAPSHOTS batch: what the depth20
parser and the local diff books alike hand to the snapshot sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

AGG_TRADES = pa.schema(
    [
        pa.field("agg_id", pa.int64(), nullable=False),
        pa.field("ts_ms", pa.int64(), nullable=False),  # trade time T
        pa.field("price", pa.float64(), nullable=False),
        pa.field("quantity", pa.float64(), nullable=False),
        pa.field("first_trade_id", pa.int64(), nullable=False),
        pa.field("last_trade_id", pa.int64(), nullable=False),
        pa.field("is_buyer_maker", pa.bool_(), nullable=False),
        pa.field("recv_ms", pa.int64()),
    ]
)

BOOK_LEVELS = 20

BOOK_SNAPSHOTS = pa.schema(
    [
        pa.field("ts_ms", pa.int64(), nullable=False),  # transaction time T
        pa.field("event_ms", pa.int64(), nullable=False),  # event time E
        pa.field("first_update_id", pa.int64()),
        pa.field("last_update_id", pa.int64(), nullable=False),
        pa.field("prev_update_id", pa.int64()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("bid_px", pa.list_(pa.float64()), nullable=False),
        pa.field("bid_qty", pa.list_(pa.float64()), nullable=False),
        pa.field("ask_px", pa.list_(pa.float64()), nullable=False),
        pa.field("ask_qty", pa.list_(pa.float64()), nullable=False),
        pa.field("mid", pa.float64()),
        pa.field("spread", pa.float64()),
        pa.field("spread_bps", pa.float64()),
        pa.field("weighted_mid_diff_bps", pa.float64()),
        pa.field("imbalance_5", pa.float64()),
        pa.field("imbalance_10", pa.float64()),
        pa.field("imbalance_20", pa.float64()),
        pa.field("bid_slope", pa.float64()),
        pa.field("ask_slope", pa.float64()),
        pa.field("bid_vol_ratio_5_20", pa.float64()),
        pa.field("ask_vol_ratio_5_20", pa.float64()),
        pa.field("ofi", pa.float64()),
        pa.field("recv_ms", pa.int64()),
    ]
)


@dataclass
class SnapshotRow:
    """One order book snapshot: E/T, U/u/pu and the levels a side, best first."""

    event_ms: int
    ts_ms: int
    first_update_id: int | None
    last_update_id: int
    prev_update_id: int | None
    bids: list[Any]  # [[price, qty], ...] strings or floats, best first
    asks: list[Any]
    recv_ms: int | None


MARK_PRICES = pa.schema(
    [
        pa.field("ts_ms", pa.int64(), nullable=False),  # event time E
        pa.field("mark_price", pa.float64(), nullable=False),
        pa.field("index_price", pa.float64()),
        pa.field("est_settle_price", pa.float64()),
        pa.field("funding_rate", pa.float64()),
        pa.field("next_funding_ms", pa.int64()),
        pa.field("recv_ms", pa.int64()),
    ]
)

FUNDING_RATES = pa.schema(
    [
        pa.field("funding_ms", pa.int64(), nullable=False),
        pa.field("funding_rate", pa.float64(), nullable=False),
        pa.field("mark_price", pa.float64()),
        pa.field("funding_interval_hours", pa.int32()),
    ]
)

OPEN_INTEREST = pa.schema(
    [
        pa.field("ts_ms", pa.int64(), nullable=False),
        pa.field("open_interest", pa.float64(), nullable=False),
        pa.field("open_interest_value", pa.float64()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("recv_ms", pa.int64()),  # live REST polls only
    ]
)

LIQUIDATIONS = pa.schema(
    [
        pa.field("ts_ms", pa.int64(), nullable=False),  # event time E
        pa.field("trade_ms", pa.int64(), nullable=False),  # o.T
        pa.field("side", pa.string(), nullable=False),
        pa.field("order_type", pa.string()),
        pa.field("time_in_force", pa.string()),
        pa.field("quantity", pa.float64(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("avg_price", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("last_filled_qty", pa.float64()),
        pa.field("filled_qty", pa.float64()),
        pa.field("recv_ms", pa.int64()),
    ]
)

# kind -> (target table, batch schema)
KINDS: dict[str, tuple[str, pa.Schema]] = {
    "agg_trades": ("agg_trades", AGG_TRADES),
    "book_snapshots": ("book_snapshots", BOOK_SNAPSHOTS),
    "mark_prices": ("mark_prices", MARK_PRICES),
    "funding_rates": ("funding_rates", FUNDING_RATES),
    "open_interest": ("open_interest", OPEN_INTEREST),
    "liquidations": ("liquidations", LIQUIDATIONS),
}

# Aggregate-id gaps a live collector detected, recorded through the writer BEFORE they are filled, so
# that a gap is never only in memory: it reaches agg_trade_gaps in submission order with the rows
# around it, spilled to disk with them when the database is away (writer kind "agg_trade_gaps").
GAP_RECORDS = pa.schema(
    [
        pa.field("from_id", pa.int64(), nullable=False),  # first missing id
        pa.field("to_id", pa.int64(), nullable=False),  # last missing id (inclusive)
        pa.field("ts_ms", pa.int64(), nullable=False),  # when it was detected (local clock)
    ]
)
GAP_KIND = "agg_trade_gaps"


def time_column(kind: str) -> str:
    """The batch column holding each row's time (a spilled batch's time range, the invalidation log)."""
    return "funding_ms" if kind == "funding_rates" else "ts_ms"


# The archive-only tables, written by writer.merge_table: column -> PostgreSQL type it is sent as, in
# COPY order (timestamptz columns come as epoch milliseconds).
BOOK_DEPTH_BANDS: dict[str, str] = {
    "symbol": "text",
    "ts": "timestamptz",
    "percentage": "double precision",  # stored as numeric(5,2): the band exactly (migration 0005)
    "depth": "double precision",
    "notional": "double precision",
}
FUTURES_METRICS: dict[str, str] = {
    "symbol": "text",
    "ts": "timestamptz",
    "sum_open_interest": "double precision",
    "sum_open_interest_value": "double precision",
    "count_toptrader_long_short_ratio": "double precision",
    "sum_toptrader_long_short_ratio": "double precision",
    "count_long_short_ratio": "double precision",
    "sum_taker_long_short_vol_ratio": "double precision",
}
PRICE_KLINES: dict[str, str] = {
    "symbol": "text",
    "kind": "text",
    "ts": "timestamptz",
    "open": "double precision",
    "high": "double precision",
    "low": "double precision",
    "close": "double precision",
    "close_ts": "timestamptz",
}
