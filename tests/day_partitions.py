"""For tests that INSERT raw rows by hand: the UTC-day partitions those rows need on plain PostgreSQL
(revision 0006 makes agg_trades and book_snapshots partitioned by day with no default partition;
the writer makes them itself). A no-op on TimescaleDB."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg


def _dt(t: int | datetime) -> datetime:
    return t if isinstance(t, datetime) else datetime.fromtimestamp(t / 1000, tz=UTC)


def day_partitions(
    conn: psycopg.Connection, table: str, lo: int | datetime, hi: int | datetime | None = None
) -> None:
    """Partitions of `table` for the days of [lo, hi] (ms since the epoch or datetimes)."""
    conn.execute(
        "SELECT microstructure_ensure_day_partitions(%s, %s, %s)",
        (table, _dt(lo), _dt(hi if hi is not None else lo)),
    )
