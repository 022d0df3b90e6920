"""The invalidation log (`raw_invalidations`): every write records the time range it touched, in its
own transaction; each consumer (the feature refresher, each Parquet export target) keeps a cursor.

The cursor is a transaction horizon, not a row id: a consumer takes the rows of every transaction
below the xmin of its snapshot (all of them ended, so all their rows are visible) and remembers
that xmin. A write still in flight has an xid at or above it and is taken by a later call, however
late it commits. Rows below every registered consumer's cursor are deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg


async def log_horizon(conn: asyncpg.Connection) -> int:
    """xid8 below which every transaction has ended: their log rows are all visible now."""
    return int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))


async def cursor_of(conn: asyncpg.Connection, consumer: str) -> int:
    value = await conn.fetchval(
        "SELECT horizon::text FROM invalidation_cursors WHERE consumer = $1", consumer
    )
    return int(value) if value is not None else 0


async def pending_ranges(
    conn: asyncpg.Connection, consumer: str, tables: Sequence[str] | None = None
) -> tuple[int, int, list[tuple[str, str, datetime, datetime]]]:
    """(cursor, horizon, [(table, symbol, lo, hi)]) of the log rows `consumer` has not consumed:
    ranges merged per (table, symbol), hi exclusive (the logged hi is the last time touched)."""
    cursor = await cursor_of(conn, consumer)
    horizon = await log_horizon(conn)
    rows = await conn.fetch(
        "SELECT table_name, symbol, lower(r) AS lo, upper(r) AS hi FROM ("
        " SELECT table_name, symbol, unnest(range_agg(tstzrange(lo, hi, '[]'))) AS r"
        " FROM raw_invalidations WHERE xid >= $1::text::xid8 AND xid < $2::text::xid8"
        " AND ($3::text[] IS NULL OR table_name = ANY($3::text[]))"
        " GROUP BY table_name, symbol) m ORDER BY 1, 2, 3",
        str(cursor),
        str(horizon),
        list(tables) if tables is not None else None,
    )
    out = [
        (r["table_name"], r["symbol"], r["lo"], r["hi"] + timedelta(microseconds=1))  # [lo, hi]
        for r in rows
    ]
    return cursor, horizon, out


async def register_consumer(conn: asyncpg.Connection, consumer: str, horizon: int) -> None:
    """Make `consumer` known at `horizon` (if it is not yet), so that no row it will need is pruned."""
    await conn.execute(
        "INSERT INTO invalidation_cursors (consumer, horizon) VALUES ($1, $2::text::xid8) ON CONFLICT DO NOTHING",
        consumer,
        str(horizon),
    )


async def advance_cursor(conn: asyncpg.Connection, consumer: str, horizon: int) -> None:
    await conn.execute(
        "INSERT INTO invalidation_cursors (consumer, horizon) VALUES ($1, $2::text::xid8) "
        "ON CONFLICT (consumer) DO UPDATE SET horizon = greatest(invalidation_cursors.horizon, excluded.horizon), "
        "updated_at = now()",
        consumer,
        str(horizon),
    )
    # Rows every registered consumer has taken are no longer needed.
    await conn.execute(
        "DELETE FROM raw_invalidations WHERE xid < (SELECT min(horizon) FROM invalidation_cursors)"
    )
