"""The raw time-series tables and how each is laid out on TimescaleDB."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeTable:
    """A raw hypertable: its time column, chunk interval and compression layout."""

    name: str
    time_column: str
    chunk_interval: str
    segment_by: str
    order_by: str
    compress_after: str


TIME_TABLES = (
    TimeTable("agg_trades", "ts", "1 day", "symbol", "ts, agg_id", "7 days"),
    TimeTable("book_snapshots", "ts", "1 day", "symbol", "ts, last_update_id", "7 days"),
    TimeTable("mark_prices", "ts", "7 days", "symbol", "ts", "14 days"),
    TimeTable("funding_rates", "funding_ts", "90 days", "symbol", "funding_ts", "180 days"),
    TimeTable("open_interest", "ts", "30 days", "symbol", "ts", "30 days"),
    TimeTable("liquidations", "ts", "30 days", "symbol", "ts, trade_ts, side, price, quantity", "30 days"),
    TimeTable("book_depth_bands", "ts", "7 days", "symbol", "ts, percentage", "14 days"),
    TimeTable("futures_metrics", "ts", "30 days", "symbol", "ts", "30 days"),
    TimeTable("price_klines", "ts", "30 days", "symbol, kind", "ts", "30 days"),
)
