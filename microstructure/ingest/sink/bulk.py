"""The bulk-load path: a whole UTC day of aggregate trades into a day that has no partition yet.

On day-partitioned PostgreSQL (revision 0006) a day nobody has written is loaded in one transaction:

1. the day's advisory lock (the one `microstructure_ensure_day_partitions` takes, so no writer makes
   the partition meanwhile) and the check that the day has no partition;
2. a fresh standalone table shaped like agg_trades, filled by binary COPY FREEZE (rows written
   frozen: no hint-bit rewrite, no anti-wraparound vacuum later);
3. the primary key and the time index built on the filled table (a sorted build, several times
   cheaper than maintaining two B-trees row by row);
4. the symbol's lock, a CHECK matching the day's bound and ATTACH PARTITION (no validation scan;
   SHARE UPDATE EXCLUSIVE on the parent, which blocks no reader and no writer of other days);
5. coverage, gaps and the invalidation log, as the writer would record them; commit.

A killed load rolls all of it back: no half-attached day, nothing to clean up; running it again
loads the day again. The session turns WAL compression off for the load when it may (an index
build writes full-page images, and the embedded server's pglz is slow) and gives the index builds
more memory.

`load_day` returns None where the path does not apply (a TimescaleDB hypertable, a day whose
partition exists, rows outside the day, an id twice): the caller writes those through the writer's
idempotent merge instead.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import date

import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.ingest.sink import coverage, invalidations
from microstructure.ingest.sink.coverage import DAY_MS, sql
from microstructure.ingest.sink.pgcopy import copy_binary, encoded_pieces
from microstructure.ingest.sink.writer import SPECS, conform, with_symbol

log = logging.getLogger(__name__)

KIND = "agg_trades"
INDEX_BUILD_MEMORY = "256MB"


def _epoch_day(d: date) -> int:
    return d.toordinal() - date(1970, 1, 1).toordinal()


async def _session_set(conn: asyncpg.Connection, setting: str, value: str) -> bool:
    """SET for the session where the role may (wal_compression needs superuser): False where not."""
    try:
        await conn.execute(f"SET {setting} = {value}")
    except asyncpg.exceptions.InsufficientPrivilegeError:
        return False
    return True


async def load_day(conn: asyncpg.Connection, symbol: str, day: date, batch: pa.Table) -> int | None:
    """Load `batch` (every aggregate trade of `symbol` on UTC `day`) by the bulk path; the rows stored,
    or None when the path does not apply (see the module doc)."""
    spec = SPECS[KIND]
    batch = conform(KIND, batch)
    if batch.num_rows == 0:
        return None
    ids = np.asarray(batch.column("agg_id").to_numpy(), dtype=np.int64)
    ts_ms = np.asarray(batch.column("ts_ms").to_numpy(), dtype=np.int64)
    d = _epoch_day(day)
    if not bool(np.all(ts_ms // DAY_MS == d)):
        return None
    # an id twice: an archive's rows come sorted, so the sort runs only when they do not
    ordered = len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1]))
    if not ordered and not bool(np.all(np.diff(np.sort(ids)) > 0)):
        return None
    table = with_symbol(batch, symbol)
    wal_off = await _session_set(conn, "wal_compression", "off")
    try:
        async with conn.transaction():
            if not await conn.fetchval(sql("bulk_day_lock"), KIND, day, column=1):
                return None
            await conn.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
            part = await conn.fetchval(sql("bulk_day_new"), KIND, day)
            # encoded in pieces in a worker thread while the server takes the previous piece: the
            # event loop (a live stream in the same process) goes on meanwhile
            pieces = encoded_pieces(table, list(spec.copy_columns))
            await copy_binary(conn, part, pieces, list(spec.db_columns), freeze=True)
            await conn.execute(sql("bulk_day_index"), KIND, day)
            await coverage.lock_symbol(conn, symbol)
            await conn.execute(sql("bulk_day_attach"), KIND, day)
            await coverage.add_batch(conn, symbol, ids, ts_ms, {d: batch.num_rows})
            await invalidations.log_range(conn, KIND, symbol, int(ts_ms.min()), int(ts_ms.max()))
    finally:
        if wal_off:
            with contextlib.suppress(asyncpg.exceptions.PostgresError, OSError):
                await conn.execute("RESET wal_compression")
    log.debug("bulk-loaded %s %s: %d rows", symbol, day, batch.num_rows)
    return batch.num_rows


async def on_timescaledb(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        return bool(await conn.fetchval(sql("timescaledb_present")))


async def compress_day(conn: asyncpg.Connection, table: str, day: date) -> int:
    """On TimescaleDB: compress the chunks of `table` inside UTC `day` when the day is older than the
    table's compression policy horizon (compress_after); the chunks compressed (0 on PostgreSQL,
    without a policy, or for a recent day)."""
    if not await conn.fetchval(sql("timescaledb_present")):
        return 0
    n = int(await conn.fetchval(sql("compress_day"), table, day) or 0)
    if n:
        log.info("compressed %s %s on load (%d chunks)", table, day, n)
    return n
