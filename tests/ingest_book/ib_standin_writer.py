"""A stand-in for microstructure.ingest.writer used only while the real writer is absent.

Same API: Writer(dsn, spill_dir), start(), submit(kind, symbol, batch), flush(), close(),
write_batch(conn, kind, symbol, batch) -> int; every kind of records.KINDS, ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa

from microstructure.ingest.book import merge_rows, ms_to_ts
from microstructure.ingest.records import KINDS

TIME_COLUMNS = {
    "ts_ms": "ts",
    "event_ms": "event_ts",
    "recv_ms": "recv_ts",
    "funding_ms": "funding_ts",
    "next_funding_ms": "next_funding_ts",
    "trade_ms": "trade_ts",
}


async def write_batch(conn: asyncpg.Connection, kind: str, symbol: str, batch: pa.Table) -> int:
    table, _schema = KINDS[kind]
    if batch.num_rows == 0:
        return 0
    cols = ["symbol"]
    data: list[list[Any]] = [[symbol] * batch.num_rows]
    for name in batch.column_names:
        values = batch.column(name).to_pylist()
        if name in TIME_COLUMNS:
            cols.append(TIME_COLUMNS[name])
            data.append(ms_to_ts(values))
        else:
            cols.append(name)
            data.append(values)
    return await merge_rows(conn, table, cols, list(zip(*data, strict=True)))


class Writer:
    def __init__(self, dsn: str, spill_dir: Path | str | None = None, **_: Any) -> None:
        self.dsn = dsn
        self.queue: asyncio.Queue[tuple[str, str, pa.Table] | None] = asyncio.Queue(maxsize=64)
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
