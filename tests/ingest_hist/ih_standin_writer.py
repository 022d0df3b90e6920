"""A minimal stand-in for microstructure.ingest.writer (used only while the real writer is absent).

Same API: Writer(dsn, spill_dir), start(), submit(kind, symbol, batch), flush(), close(), and
write_batch(conn, kind, symbol, batch) -> int: one transaction, idempotent, coverage recomputed for
the days the batch touches.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa


def _ts(ms: list[int]) -> list[datetime]:
    return [datetime.fromtimestamp(t / 1000, tz=UTC) for t in ms]


async def write_batch(conn: asyncpg.Connection, kind: str, symbol: str, batch: pa.Table) -> int:
    assert kind == "agg_trades", kind
    if batch.num_rows == 0:
        return 0
    cols = batch.to_pydict()
    records = list(
        zip(
            [symbol] * batch.num_rows,
            cols["agg_id"],
            _ts(cols["ts_ms"]),
            cols["price"],
            cols["quantity"],
            cols["first_trade_id"],
            cols["last_trade_id"],
            cols["is_buyer_maker"],
            strict=True,
        )
    )
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_agg (LIKE agg_trades INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(
            "stage_agg",
            records=records,
            columns=[
                "symbol",
                "agg_id",
                "ts",
                "price",
                "quantity",
                "first_trade_id",
                "last_trade_id",
                "is_buyer_maker",
            ],
        )
        status = await conn.execute("INSERT INTO agg_trades SELECT * FROM stage_agg ON CONFLICT DO NOTHING")
        await conn.execute(
            """
            INSERT INTO agg_trade_coverage (symbol, day, first_id, last_id, row_count, missing_count)
            SELECT symbol, (ts AT TIME ZONE 'UTC')::date, min(agg_id), max(agg_id), count(*),
                   max(agg_id) - min(agg_id) + 1 - count(*)
            FROM agg_trades
            WHERE symbol = $1 AND (ts AT TIME ZONE 'UTC')::date IN (
                SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM stage_agg)
            GROUP BY 1, 2
            ON CONFLICT (symbol, day) DO UPDATE SET first_id = EXCLUDED.first_id, last_id = EXCLUDED.last_id,
                row_count = EXCLUDED.row_count, missing_count = EXCLUDED.missing_count, updated_at = now()
            """,
            symbol,
        )
    return int(status.split()[-1])


class Writer:
    def __init__(self, dsn: str, spill_dir: Path | str | None = None, **_: Any) -> None:
        self.dsn = dsn
        self.queue: asyncio.Queue[tuple[str, str, pa.Table] | None] = asyncio.Queue(maxsize=8)
        self.task: asyncio.Task[None] | None = None
        self.conn: asyncpg.Connection | None = None
        self.rows_written = 0

    async def start(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if item is None:
                    return
                assert self.conn is not None
                self.rows_written += await write_batch(self.conn, *item)
            finally:
                self.queue.task_done()

    async def submit(self, kind: str, symbol: str, batch: pa.Table) -> None:
        if self.task is not None and self.task.done():
            self.task.result()
        await self.queue.put((kind, symbol, batch))

    async def flush(self) -> None:
        await self.queue.join()
        if self.task is not None and self.task.done():
            self.task.result()

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            await self.queue.put(None)
            await self.task
        if self.conn is not None:
            await self.conn.close()
