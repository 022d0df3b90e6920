"""What is already stored, read by the collectors to decide what to fetch."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from microstructure.ingest.sink.coverage import sql


async def last_open_interest_ms(conn: asyncpg.Connection, symbols: Sequence[str]) -> dict[str, int | None]:
    """Epoch ms of each symbol's last stored open-interest row (any source); None when it has none."""
    rows = await conn.fetch(sql("open_interest_last"), list(symbols))
    return {r["symbol"]: r["last_ms"] for r in rows}
