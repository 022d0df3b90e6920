"""What a write tells the readers downstream: the time ranges it touched (the invalidation log the
feature refresher and the Parquet export consume), and the book's OFI terms it changed."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from microstructure.ingest.sink.coverage import sql


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def log_range(conn: asyncpg.Connection, table: str, symbol: str, lo_ms: int, hi_ms: int) -> None:
    """Record that rows of `table` for `symbol` with times in [lo_ms, hi_ms] changed (in the write's
    transaction, so the log holds exactly what committed)."""
    await conn.execute(sql("invalidation_log"), table, symbol, int(lo_ms), int(hi_ms))


async def fix_book_ofi(conn: asyncpg.Connection, symbol: str, lo_ms: int, hi_ms: int) -> int:
    """Recompute the OFI terms of the snapshots just written in [lo_ms, hi_ms] and of their successor
    against the stored previous snapshot; returns the latest time (ms) of a row it changed, or hi_ms."""
    rows = await conn.fetch(sql("book_ofi_fix"), symbol, _ts(lo_ms), _ts(hi_ms))
    latest = max((r["ts"] for r in rows), default=None)
    return max(hi_ms, round(latest.timestamp() * 1000)) if latest is not None else hi_ms


async def log_ranges(
    conn: asyncpg.Connection, table: str, symbols: list[str], lo_ms: list[int], hi_ms: list[int]
) -> None:
    """log_range for several symbols in one statement (one element of each list per symbol)."""
    if symbols:
        await conn.execute(sql("invalidation_log_many"), table, symbols, lo_ms, hi_ms)


async def fix_book_ofi_many(
    conn: asyncpg.Connection, symbols: list[str], lo_ms: list[int], hi_ms: list[int]
) -> list[int]:
    """fix_book_ofi for every symbol of a flush in one statement; returns each symbol's widened hi."""
    rows = await conn.fetch(
        sql("book_ofi_fix_many"), symbols, [_ts(v) for v in lo_ms], [_ts(v) for v in hi_ms]
    )
    latest: dict[str, int] = {}
    for r in rows:
        ms = round(r["ts"].timestamp() * 1000)
        latest[r["symbol"]] = max(latest.get(r["symbol"], ms), ms)
    return [max(h, latest.get(s, h)) for s, h in zip(symbols, hi_ms, strict=True)]
