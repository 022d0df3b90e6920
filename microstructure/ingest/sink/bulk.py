"""The bulk-load path: a whole UTC day of aggregate trades into a day that has no partition yet.

On day-partitioned PostgreSQL (revisions 0006, 0007) a day nobody has written is loaded so:

1. the day's lock, held by the loading session until the end (the lock
   `microstructure_ensure_day_partitions` takes, so no writer makes the partition meanwhile), and
   the check that the day has no partition;
2. a fresh table `microstructure_load.<partition>` shaped like agg_trades with the CHECK of the
   day's bound, filled by binary COPY FREEZE (rows written frozen: no hint-bit rewrite, no
   anti-wraparound vacuum later) and committed, so that other connections see it;
3. its key and time index built side by side, one connection each (a sorted build each, several
   times cheaper than maintaining two B-trees row by row, and on two cores together about 30 % less
   wall time than one after the other), each scanning the table from its start (no synchronized
   scan, see `_load_session`);
4. its statistics gathered (ANALYZE: the feature refresh right after the load plans by them);
5. in one transaction: the symbol's lock, the key constraint, the move into the parent's schema and
   ATTACH PARTITION (no validation scan: the CHECK matches; SHARE UPDATE EXCLUSIVE on the parent,
   which blocks no reader and no writer of other days), coverage, gaps and the invalidation log as
   the writer would record them; commit.

Nothing of the day is visible in agg_trades until the last commit. A load that fails drops its table;
one killed midway leaves at most the unattached table in microstructure_load, which no query of
agg_trades sees and which the next historical run drops (`drop_stale_load_tables`, at its start) or
the next load of the day replaces: running it again loads the day again. The
sessions turn WAL compression off for the load when they may (an index build writes full-page
images, and the embedded server's pglz is slow) and give the index builds more memory. On a server
with `wal_level = minimal` (the embedded one) the COPY and the builds write no WAL at all: the table
and each index are new in their transaction and fsynced at its commit.

`begin_day` does steps 1-2 and hands back a `DayLoad` whose `finish` does steps 3-5 (or `abandon`
drops the table): the historical collector copies the next day while this one's indexes build.
`load_day` is the two one after the other. Both return None where the path does not apply (a
TimescaleDB hypertable, a day whose partition exists, rows outside the day, an id twice): the
caller writes those through the writer's idempotent merge instead. They take a pool: the index
builds need a connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date

import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.ingest.sink import coverage, invalidations
from microstructure.ingest.sink.coverage import DAY_MS, sql
from microstructure.ingest.sink.pgcopy import ColumnSpec, copy_binary, encoded_pieces
from microstructure.ingest.sink.writer import SPECS, conform

log = logging.getLogger(__name__)

KIND = "agg_trades"
INDEX_BUILD_MEMORY = "256MB"
LOAD_SCHEMA = "microstructure_load"  # where a day's table waits to be attached (revision 0007)
# what a load or its clean-up meets when the server or the connection goes (a pool's connection that
# ended is detached from its proxy, whose every call then raises InterfaceError); a clean-up step
# suppresses these, so the error that ended the load is the one raised
LOAD_ERRORS = (asyncpg.exceptions.PostgresError, asyncpg.exceptions.InterfaceError, OSError)
# what a failed load raises that its caller may write through the writer instead: the server's
# errors and a lost connection, not a closed pool (the run is ending)
FALLBACK_ERRORS = (asyncpg.exceptions.PostgresError, asyncpg.exceptions.ConnectionDoesNotExistError, OSError)


def _epoch_day(d: date) -> int:
    return d.toordinal() - date(1970, 1, 1).toordinal()


@contextlib.asynccontextmanager
async def _load_session(conn: asyncpg.Connection, *, parallel_builds: bool = False) -> AsyncIterator[None]:
    """The session settings of a load: WAL compression off where the role may (it needs superuser),
    more memory for index builds, and for a build that runs beside another one no parallel workers
    (two builds at once already take both cores) and no synchronized scan: the second build's scan
    would join the first one's midway through the table and read it rotated, not in its sorted
    order, and that build then took 3-5 s instead of 1.3 s (bench_load_day.py, in-collector runs).
    Put back on the way out."""
    applied = []
    try:
        await conn.execute("SET wal_compression = off")
        applied.append("wal_compression")
    except asyncpg.exceptions.InsufficientPrivilegeError:
        pass
    await conn.execute(f"SET maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    applied.append("maintenance_work_mem")
    if parallel_builds:
        await conn.execute("SET max_parallel_maintenance_workers = 0")
        applied.append("max_parallel_maintenance_workers")
        await conn.execute("SET synchronize_seqscans = off")
        applied.append("synchronize_seqscans")
    try:
        yield
    finally:
        with contextlib.suppress(*LOAD_ERRORS):
            await conn.execute("; ".join(f"RESET {name}" for name in applied))


def _sent_columns(table: pa.Table) -> tuple[list[ColumnSpec], list[str]]:
    """The columns the COPY sends: not the symbol (the load table's default), nor a column null in
    every row (an archive has no receive time): a fifth less to encode and for the server to read."""
    spec = SPECS[KIND]
    keep = [
        (c, name)
        for c, name in zip(spec.copy_columns, spec.db_columns, strict=True)
        if name != "symbol" and table.column(c.source).null_count < table.num_rows
    ]
    return [c for c, _ in keep], [name for _, name in keep]


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] = now - since
    return now


async def _build(pool: asyncpg.Pool, statement: str, parallel: bool, phases: dict[str, float]) -> None:
    t = time.perf_counter()
    async with pool.acquire() as conn, _load_session(conn, parallel_builds=parallel):
        await conn.execute(statement)  # a CREATE INDEX the catalog wrote (bulk_day_index.sql)
    _phase(phases, "build " + statement.partition(" USING ")[2], t)  # e.g. "build btree (symbol, ts)"


async def load_day(
    pool: asyncpg.Pool, symbol: str, day: date, batch: pa.Table, *, phases: dict[str, float] | None = None
) -> int | None:
    """Load `batch` (every aggregate trade of `symbol` on UTC `day`) by the bulk path; the rows stored,
    or None when the path does not apply (see the module doc). Holds up to 1 + (the table's indexes)
    of the pool's connections at once. `phases`, when given, receives each step's seconds: `copy`
    (the COPY and its commit), `build <index>` for each index and `builds` (all of them, side by
    side), `analyze`, `attach` (the last transaction). `begin_day` then `DayLoad.finish`, one after the other."""
    load = await begin_day(pool, symbol, day, batch, phases=phases)
    return None if load is None else await load.finish()


@dataclass
class DayLoad:
    """A day whose rows are in its load table and committed (steps 1-2 of the module doc done): it
    holds the day's lock and its connection until `finish` (steps 3-5) or `abandon` (the table
    dropped). Nothing of it is in agg_trades yet. The caller may do other work between the two, e.g.
    the next day's COPY while this day's indexes build (trades_historical.py), but must call one of
    them: until then the day stays locked and the connection taken."""

    pool: asyncpg.Pool
    symbol: str
    day: date
    rows: int
    ids: np.ndarray
    ts_ms: np.ndarray
    phases: dict[str, float]
    conn: asyncpg.Connection
    _release: contextlib.AsyncExitStack
    _done: bool = False

    async def finish(self) -> int:
        """Build the indexes side by side, analyze, attach the day with its coverage; the rows stored. On a
        failure the day's table is dropped and the error raised: the day stays unloaded."""
        self._claim()
        try:
            await _build_and_attach(self)
        finally:
            await self._close()
        log.debug("bulk-loaded %s %s: %d rows", self.symbol, self.day, self.rows)
        return self.rows

    async def abandon(self) -> None:
        """Drop the day's table unattached and give back the lock and the connection."""
        self._claim()
        try:
            await _discard(self.pool, self.conn, self.day)
        finally:
            await self._close()

    @property
    def done(self) -> bool:
        """finish or abandon has been called."""
        return self._done

    def _claim(self) -> None:
        if self._done:
            raise RuntimeError(f"bulk load of {self.symbol} {self.day} already finished or abandoned")
        self._done = True

    async def _close(self) -> None:
        await self._release.aclose()


async def begin_day(
    pool: asyncpg.Pool, symbol: str, day: date, batch: pa.Table, *, phases: dict[str, float] | None = None
) -> DayLoad | None:
    """Steps 1-2 of the module doc for `batch` (every aggregate trade of `symbol` on UTC `day`): the
    day locked, its rows copied into a fresh load table and committed; the load to finish, or None
    when the path does not apply (nothing is left held then)."""
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
    async with contextlib.AsyncExitStack() as stack:
        conn = await stack.enter_async_context(pool.acquire())
        await stack.enter_async_context(_load_session(conn))
        if not await conn.fetchval(sql("bulk_day_lock"), KIND, day, column=1):
            await conn.execute(sql("bulk_day_unlock"), KIND, day)
            return None
        stack.push_async_callback(_unlock, conn, day)
        step = time.perf_counter()
        try:
            async with conn.transaction():
                part = await conn.fetchval(sql("bulk_day_new"), KIND, day, symbol)
                # encoded in pieces in a worker thread while the server takes the previous piece: the
                # event loop (a live stream in the same process) goes on meanwhile
                copy_columns, db_columns = _sent_columns(batch)
                pieces = encoded_pieces(batch, copy_columns)
                await copy_binary(conn, part, pieces, db_columns, freeze=True, schema=LOAD_SCHEMA)
        except BaseException as exc:
            await _discard(pool, conn, day)
            _raise_lost(conn, exc)
            raise
        phases = {} if phases is None else phases
        _phase(phases, "copy", step)
        # from here the load owns the lock and the connection, given back by finish or abandon
        return DayLoad(pool, symbol, day, batch.num_rows, ids, ts_ms, phases, conn, stack.pop_all())
    return None  # not reached: the block returns or raises (a type checker cannot see it)


async def _unlock(conn: asyncpg.Connection, day: date) -> None:
    with contextlib.suppress(*LOAD_ERRORS):
        await conn.execute(sql("bulk_day_unlock"), KIND, day)


def _raise_lost(conn: asyncpg.Connection, exc: BaseException) -> None:
    """An InterfaceError on a connection that has ended (asyncpg then says e.g. "the underlying
    connection is closed") is the connection's loss: raised as ConnectionDoesNotExistError, which a
    caller may take for a failed load. Any other InterfaceError (a closed pool) stays what it is."""
    if not isinstance(exc, asyncpg.exceptions.InterfaceError) or isinstance(
        exc, asyncpg.exceptions.ConnectionDoesNotExistError
    ):
        return
    if _ended(conn):
        raise asyncpg.exceptions.ConnectionDoesNotExistError(f"connection lost: {exc}") from exc


def _ended(conn: asyncpg.Connection) -> bool:
    """The connection has ended (a pool proxy detached from its ended connection counts too)."""
    try:
        return conn.is_closed()
    except asyncpg.exceptions.InterfaceError:
        return True


async def _discard(pool: asyncpg.Pool, conn: asyncpg.Connection, day: date) -> None:
    """Drop the day's table on the load's connection; when that connection has ended (its session
    gone with its day lock), from another one, as `drop_stale_load_tables` does: only tables no live
    loader holds."""
    try:
        await conn.execute(sql("bulk_day_discard"), KIND, day)
    except LOAD_ERRORS:
        if _ended(conn):
            with contextlib.suppress(*LOAD_ERRORS, TimeoutError):
                await asyncio.wait_for(drop_stale_load_tables(pool), 10)


async def _build_and_attach(load: DayLoad) -> None:
    """Steps 3-5 of the module doc, under the day's lock; what a failure leaves is dropped."""
    conn, day, phases = load.conn, load.day, load.phases
    step = time.perf_counter()
    try:
        builds = [r["build"] for r in await conn.fetch(sql("bulk_day_index"), KIND, day)]
        tasks = [asyncio.ensure_future(_build(load.pool, b, len(builds) > 1, phases)) for b in builds]
        try:
            await asyncio.gather(*tasks)  # the first failure raised as itself
        finally:
            for t in tasks:  # and the others cancelled, their connections given back
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        step = _phase(phases, "builds", step)
        await conn.execute(
            await conn.fetchval(sql("bulk_day_analyze"), KIND, day)
        )  # an ANALYZE the catalog named
        step = _phase(phases, "analyze", step)
        async with conn.transaction():
            await coverage.lock_symbol(conn, load.symbol)
            await conn.execute(sql("bulk_day_attach"), KIND, day)
            await coverage.add_batch(conn, load.symbol, load.ids, load.ts_ms, {_epoch_day(day): load.rows})
            await invalidations.log_range(
                conn, KIND, load.symbol, int(load.ts_ms.min()), int(load.ts_ms.max())
            )
        _phase(phases, "attach", step)
    except BaseException as exc:
        await _discard(load.pool, conn, day)
        _raise_lost(conn, exc)
        raise


async def drop_stale_load_tables(pool: asyncpg.Pool) -> list[str]:
    """Drop what killed loads left in microstructure_load (tables no live loader holds); their names.
    A load at work in another process keeps its table."""
    async with pool.acquire() as conn:
        names = [r["name"] for r in await conn.fetch(sql("bulk_drop_stale"))]
    if names:
        log.warning(
            "dropped %d day table(s) a killed bulk load left unattached: %s", len(names), ", ".join(names)
        )
    return names


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
