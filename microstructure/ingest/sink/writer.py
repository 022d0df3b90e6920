"""The writer every collector shares: binary COPY into staging, idempotent merge, one transaction a batch.

`write_batch` is the unit: COPY the Arrow batch (vectorised binary encoding) into a temporary staging
table, `INSERT ... SELECT ... ON CONFLICT DO NOTHING` into the raw table (natural keys make a
repeated batch a no-op), and for aggregate trades update coverage and gaps, all in one transaction.
An aggregate-trade batch whose id range holds no stored row (checked under the symbol's advisory
lock) is COPYed straight into agg_trades: nothing can conflict, and bulk loads run at COPY speed.

`Writer` runs it in the background: `submit` returns at once; batches wait in a bounded memory queue
and are written in submission order. `submit_many` (and a pull of the live sources) hands the rows
of many symbols of one kind over as ONE item: one queue slot, one spill file, one transaction. When the queue is full or the database is unreachable, batches
spill to Arrow IPC files (written to a temporary name, fsynced, renamed) and are replayed in order
once the database answers; a file is deleted only after its batch committed. Leftover files of a
killed run are replayed on start. A batch the database refuses as data (not a connection problem)
is moved to `rejected/` with a log line, so it cannot block the pipeline.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from microstructure.config import Settings
from microstructure.ingest.records import GAP_KIND, GAP_RECORDS, KINDS, time_column
from microstructure.ingest.sink import coverage, invalidations
from microstructure.ingest.sink.partitions import DayPartitions, is_missing_partition
from microstructure.ingest.sink.pgcopy import ColumnSpec, copy_binary, encode_copy_binary
from microstructure.ingest.sink.spill_report import spill_folder

log = logging.getLogger(__name__)

# Arrow millisecond columns and the timestamptz columns they fill.
TIME_COLUMNS = {
    "ts_ms": "ts",
    "event_ms": "event_ts",
    "recv_ms": "recv_ts",
    "funding_ms": "funding_ts",
    "next_funding_ms": "next_funding_ts",
    "trade_ms": "trade_ts",
}


def _pg_type(name: str, typ: pa.DataType) -> str:
    if name in TIME_COLUMNS:
        return "timestamptz"
    if pa.types.is_int64(typ):
        return "bigint"
    if pa.types.is_int32(typ):
        return "integer"
    if pa.types.is_floating(typ):
        return "double precision"
    if pa.types.is_boolean(typ):
        return "boolean"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "text"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return "float8[]"
    raise TypeError(f"column {name}: no PostgreSQL type for {typ}")


@dataclass(frozen=True)
class KindSpec:
    kind: str
    table: str
    schema: pa.Schema
    copy_columns: tuple[ColumnSpec, ...]  # symbol first, then the batch's columns
    db_columns: tuple[str, ...]

    @property
    def time_field(self) -> str:
        """The batch column holding each row's time (what the invalidation log records)."""
        return time_column(self.kind)

    @property
    def stage(self) -> str:
        return f"stage_{self.table}"

    def stage_sql(self) -> str:
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} (LIKE {self.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"

    def merge_sql(self) -> str:
        cols = ", ".join(self.db_columns)
        insert = f"INSERT INTO {self.table} ({cols}) SELECT {cols} FROM {self.stage} ON CONFLICT DO NOTHING"
        if self.kind == "funding_rates":
            # A settlement is the same fact from every source, but each source knows part of it: the
            # archives lack mark_price, REST lacks the interval of a page's first row. A repeat
            # completes what is still null and changes nothing else.
            # One flush may stage the same settlement twice (an archive's and REST's rows joined in
            # one item): ON CONFLICT DO UPDATE may touch a row once, so the staged rows are one per
            # settlement first, each column's non-null value kept.
            keys = ("symbol", "funding_ts")
            merged = ", ".join(c if c in keys else f"min({c}) AS {c}" for c in self.db_columns)
            return (
                f"INSERT INTO {self.table} ({cols}) SELECT {merged} FROM {self.stage} GROUP BY symbol, funding_ts "
                "ON CONFLICT (symbol, funding_ts) DO UPDATE SET "
                "mark_price = coalesce(funding_rates.mark_price, excluded.mark_price), "
                "funding_interval_hours = coalesce(funding_rates.funding_interval_hours, excluded.funding_interval_hours) "
                "WHERE (funding_rates.mark_price IS NULL AND excluded.mark_price IS NOT NULL) "
                "OR (funding_rates.funding_interval_hours IS NULL AND excluded.funding_interval_hours IS NOT NULL)"
            )
        if self.kind == "agg_trades":
            # Rows inserted per UTC day, for coverage.
            return (
                f"WITH ins AS ({insert} RETURNING ts) SELECT (extract(epoch FROM ts) * 1000)::bigint / 86400000 "
                "AS day, count(*) AS n FROM ins GROUP BY 1"
            )
        return insert

    def merge_many_sql(self) -> str:
        """merge_sql returning the rows inserted per symbol (and, for agg_trades, per UTC day)."""
        base = self.merge_sql()
        if self.kind == "agg_trades":
            cols = ", ".join(self.db_columns)
            return (
                f"WITH ins AS (INSERT INTO {self.table} ({cols}) SELECT {cols} FROM {self.stage} "
                "ON CONFLICT DO NOTHING RETURNING symbol, ts) SELECT symbol, "
                "(extract(epoch FROM ts) * 1000)::bigint / 86400000 AS day, count(*) AS n FROM ins GROUP BY 1, 2"
            )
        return f"WITH ins AS ({base} RETURNING symbol) SELECT symbol, count(*) AS n FROM ins GROUP BY 1"


def _kind_spec(kind: str) -> KindSpec:
    table, schema = KINDS[kind]
    copy_cols = [ColumnSpec("__symbol", "text")]
    db_cols = ["symbol"]
    for f in schema:
        copy_cols.append(ColumnSpec(f.name, _pg_type(f.name, f.type)))
        db_cols.append(TIME_COLUMNS.get(f.name, f.name))
    return KindSpec(kind, table, schema, tuple(copy_cols), tuple(db_cols))


SPECS = {kind: _kind_spec(kind) for kind in KINDS}
# Not a raw table: gaps a live collector detected, recorded in agg_trade_gaps before their fill.
SPECS[GAP_KIND] = KindSpec(
    GAP_KIND,
    "agg_trade_gaps",
    GAP_RECORDS,
    tuple(ColumnSpec(f.name, "bigint") for f in GAP_RECORDS),
    tuple(f.name for f in GAP_RECORDS),
)


def with_symbol(batch: pa.Table, symbol: str) -> pa.Table:
    """The batch with its symbol as the `__symbol` column the COPY's first field comes from."""
    return batch.append_column("__symbol", pa.repeat(pa.scalar(symbol, pa.string()), batch.num_rows))


def conform(kind: str, batch: pa.Table) -> pa.Table:
    """The batch with exactly the kind's columns in order and types (missing nullable columns are null)."""
    spec = SPECS[kind]
    cols = []
    for f in spec.schema:
        if f.name in batch.column_names:
            cols.append(batch.column(f.name).cast(f.type))
        elif f.nullable:
            cols.append(pa.nulls(batch.num_rows, f.type))
        else:
            raise ValueError(f"{kind} batch lacks the column {f.name!r}")
    return pa.Table.from_arrays(cols, schema=spec.schema)


async def write_batch(
    conn: asyncpg.Connection,
    kind: str,
    symbol: str,
    batch: pa.Table,
    *,
    gap_fill: bool = False,
    partitions: DayPartitions | None = None,
) -> int:
    """Write one symbol's batch in one transaction; returns the rows inserted (duplicates are
    skipped; for funding_rates a repeat that completes a null mark price or interval counts too).
    `gap_fill` (agg_trades): the rows were fetched for ids known to be missing (and recorded so), so
    the gap bookkeeping records no new gap from them (coverage.py). `partitions`: what this process
    knows of the day partitions (partitions.py); without it they are checked on every call. The
    one-symbol case of `write_rows`."""
    return sum(
        (await write_rows(conn, kind, batch, symbol, gap_fill=gap_fill, partitions=partitions)).values()
    )


def _symbol_codes(
    symbols: str | pa.Array | pa.ChunkedArray, n: int
) -> tuple[list[str], np.ndarray, pa.Array]:
    """(the distinct symbols, each row's index into them, the per-row symbol column as strings)."""
    if isinstance(symbols, str):
        return [symbols], np.zeros(n, dtype=np.int64), pa.repeat(pa.scalar(symbols, pa.string()), n)
    if isinstance(symbols, pa.ChunkedArray):
        symbols = symbols.combine_chunks()
    if pa.types.is_dictionary(symbols.type):
        enc = symbols
        col = symbols.cast(pa.string())
    else:
        col = symbols.cast(pa.string())
        enc = pc.dictionary_encode(col)
    if len(col) != n:
        raise ValueError(f"{len(col)} symbols for {n} rows")
    names = [str(x) for x in enc.dictionary.to_pylist()]
    codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return names, codes, col


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted `keys`: where each run of equal keys starts and ends (exclusive)."""
    starts = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1)).astype(np.int64)
    ends = np.append(starts[1:], len(keys)).astype(np.int64)
    return starts, ends


async def write_rows(
    conn: asyncpg.Connection,
    kind: str,
    batch: pa.Table,
    symbols: str | pa.Array | pa.ChunkedArray,
    *,
    gap_fill: bool = False,
    partitions: DayPartitions | None = None,
) -> dict[str, int]:
    """Write the rows of any number of symbols of one kind in one transaction: one COPY, one merge,
    and coverage, gaps and the invalidation log updated for every symbol at once (set-based SQL over
    arrays, a fixed number of statements whatever the symbol count). `symbols`: one symbol for every
    row, or each row's symbol (an Arrow string or dictionary array). Returns the rows inserted per
    symbol (symbols with none inserted may be absent)."""
    spec = SPECS[kind]
    batch = conform(kind, batch)
    n = batch.num_rows
    if n == 0:
        return {}
    names, codes, sym_col = _symbol_codes(symbols, n)
    if kind == GAP_KIND:
        async with conn.transaction():
            await coverage.record_gaps_many(
                conn,
                [names[c] for c in codes.tolist()],
                batch.column("from_id").to_pylist(),
                batch.column("to_id").to_pylist(),
            )
        return {}
    table = batch.append_column("__symbol", sym_col)
    payload = encode_copy_binary(table, list(spec.copy_columns))
    times = np.asarray(batch.column(spec.time_field).to_numpy(), dtype=np.int64)
    lo_ms, hi_ms = int(times.min()), int(times.max())
    parts = partitions if partitions is not None else DayPartitions()
    await parts.ensure(conn, spec.table, lo_ms, hi_ms)
    try:
        return await _write_rows(conn, spec, names, codes, batch, payload, times, gap_fill)
    except asyncpg.exceptions.CheckViolationError as exc:
        if not is_missing_partition(exc):
            raise
        parts.forget(spec.table)  # dropped since this process made it (retention): make it again
        await parts.ensure(conn, spec.table, lo_ms, hi_ms)
        return await _write_rows(conn, spec, names, codes, batch, payload, times, gap_fill)


def _time_ranges(
    names: list[str], codes: np.ndarray, times: np.ndarray
) -> tuple[list[str], list[int], list[int]]:
    """Per symbol present: its first and last row time."""
    k = len(names)
    if k == 1:
        return names, [int(times.min())], [int(times.max())]
    lo = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(k, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, codes, times)
    np.maximum.at(hi, codes, times)
    present = np.flatnonzero(lo <= hi)
    return [names[i] for i in present.tolist()], lo[present].tolist(), hi[present].tolist()


async def _write_rows(
    conn: asyncpg.Connection,
    spec: KindSpec,
    names: list[str],
    codes: np.ndarray,
    batch: pa.Table,
    payload: bytes,
    times: np.ndarray,
    gap_fill: bool,
) -> dict[str, int]:
    kind = spec.kind
    async with conn.transaction():
        if kind != "agg_trades":
            await conn.execute(spec.stage_sql())
            await copy_binary(conn, spec.stage, payload, list(spec.db_columns))
            inserted = {r["symbol"]: int(r["n"]) for r in await conn.fetch(spec.merge_many_sql())}
            if inserted:
                syms, lo, hi = _time_ranges(names, codes, times)
                keep = [i for i, s in enumerate(syms) if inserted.get(s)]
                syms, lo, hi = [syms[i] for i in keep], [lo[i] for i in keep], [hi[i] for i in keep]
                if kind == "book_snapshots":
                    hi = await invalidations.fix_book_ofi_many(conn, syms, lo, hi)
                await invalidations.log_ranges(conn, spec.table, syms, lo, hi)
            return inserted
        # Serialise writers of each symbol: the gap bookkeeping reads what others write, and the
        # direct path below relies on no other writer filling the id ranges meanwhile.
        await coverage.lock_symbols(conn, sorted(names))
        ids = np.asarray(batch.column("agg_id").to_numpy(), dtype=np.int64)
        days = np.asarray(batch.column("ts_ms").to_numpy(), dtype=np.int64) // coverage.DAY_MS
        # per symbol, ids in order (a stream's flush is already so: the sort is cheap)
        order = np.lexsort((ids, codes)) if len(names) > 1 else np.argsort(ids, kind="stable")
        c_s, id_s = codes[order], ids[order]
        starts, ends = _groups(c_s)
        g_codes = c_s[starts]
        g_names = [names[c] for c in g_codes.tolist()]
        lo_ids, hi_ids = id_s[starts], id_s[ends - 1]
        same = (c_s[1:] == c_s[:-1]) & (id_s[1:] == id_s[:-1])
        unique = not bool(same.any())
        distinct = (ends - starts) - np.add.reduceat(np.append(same, False).astype(np.int64), starts)
        complete = distinct == hi_ids - lo_ids + 1
        if unique and not await coverage.ranges_taken(conn, g_names, lo_ids, hi_ids):
            # Nothing stored in any symbol's id range and no id twice: nothing can conflict, so the
            # rows go straight into the table (the bulk-load case: archives, REST pages, a live
            # flush) at bare COPY speed.
            await copy_binary(conn, spec.table, payload, list(spec.db_columns))
            key = codes * 1_000_000 + days
            uk, counts = np.unique(key, return_counts=True)
            ins = {(int(k) // 1_000_000, int(k) % 1_000_000): int(c) for k, c in zip(uk, counts, strict=True)}
        else:
            await conn.execute(spec.stage_sql())
            await copy_binary(conn, spec.stage, payload, list(spec.db_columns))
            index = {s: i for i, s in enumerate(names)}
            ins = {
                (index[r["symbol"]], int(r["day"])): int(r["n"])
                for r in await conn.fetch(spec.merge_many_sql())
            }
        # per (symbol, day): first and last id of the flush, rows inserted
        dorder = np.lexsort((days, codes))
        dk = codes[dorder] * 1_000_000 + days[dorder]
        ds, _ = _groups(dk)
        dids = ids[dorder]
        d_codes, d_days = codes[dorder][ds], days[dorder][ds]
        d_first, d_last = np.minimum.reduceat(dids, ds), np.maximum.reduceat(dids, ds)
        d_ins = np.array(
            [ins.get((int(c), int(d)), 0) for c, d in zip(d_codes.tolist(), d_days.tolist(), strict=True)],
            dtype=np.int64,
        )
        await coverage.add_flush(
            conn, g_names, lo_ids, hi_ids, complete, [names[c] for c in d_codes.tolist()],
            d_days, d_first, d_last, d_ins, gap_fill=gap_fill,
        )  # fmt: skip
        per_symbol: dict[str, int] = {}
        for (c, _d), v in ins.items():
            per_symbol[names[c]] = per_symbol.get(names[c], 0) + v
        if any(per_symbol.values()):
            syms, lo, hi = _time_ranges(names, codes, times)
            keep = [i for i, s in enumerate(syms) if per_symbol.get(s)]
            await invalidations.log_ranges(
                conn, spec.table, [syms[i] for i in keep], [lo[i] for i in keep], [hi[i] for i in keep]
            )
        return per_symbol


CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)


# A batch is refused at once only for what another try cannot change: its rows break a type or a
# constraint (SQLSTATE classes 22 and 23). Any other failure (a client protocol state left behind by
# a server that went away mid-statement, a lock timeout, ...) is tried again on a fresh connection
# a few times before the batch is set aside.
DATA_ERROR_CLASSES = ("22", "23")
OTHER_ERROR_TRIES = 3


def is_data_error(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in DATA_ERROR_CLASSES


def writer_problems(left: int, rejected: int, dropped: int = 0) -> list[str]:
    """What a run's report says when batches did not reach the database."""
    out = []
    if left:
        out.append(f"{left} batches left in spill files (not in the database; replayed on the next start)")
    if rejected:
        out.append(f"{rejected} batches refused by the database (moved to spill/rejected)")
    if dropped:
        out.append(
            f"{dropped} batches dropped: the database was away and the spill folder full "
            "(each recorded in ingest_events as 'dropped', or logged when the database never came back)"
        )
    return out


@dataclass
class WriterStats:
    batches_submitted: int = 0
    rows_submitted: int = 0
    batches_committed: int = 0
    rows_committed: int = 0
    rows_inserted: int = 0
    batches_spilled: int = 0
    batches_replayed: int = 0
    batches_rejected: int = 0
    batches_dropped: int = 0  # spill folder full while the database was away: oldest in memory dropped
    rows_dropped: int = 0
    db_errors: int = 0
    gaps_recorded: int = 0  # aggregate-id gaps recorded in agg_trade_gaps before their fill
    last_commit_unix: float | None = None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    @property
    def duplicates_skipped(self) -> int:
        return self.rows_committed - self.rows_inserted

    def latency_quantile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.quantile(np.fromiter(self.latencies_ms, dtype=np.float64), q))

    def as_dict(self) -> dict[str, object]:
        return {
            "batches_submitted": self.batches_submitted,
            "rows_submitted": self.rows_submitted,
            "rows_committed": self.rows_committed,
            "rows_inserted": self.rows_inserted,
            "duplicates_skipped": self.duplicates_skipped,
            "batches_spilled": self.batches_spilled,
            "batches_replayed": self.batches_replayed,
            "batches_rejected": self.batches_rejected,
            "batches_dropped": self.batches_dropped,
            "rows_dropped": self.rows_dropped,
            "db_errors": self.db_errors,
            "gaps_recorded": self.gaps_recorded,
            "commit_latency_p50_ms": self.latency_quantile(0.5),
            "commit_latency_p99_ms": self.latency_quantile(0.99),
        }


@dataclass
class _Item:
    kind: str
    symbol: str
    batch: pa.Table
    submitted: float  # time.monotonic()
    seq: int = 0  # submission order: spill file names and the write order follow it
    gap_fill: bool = False  # agg_trades fetched for ids known to be missing (write_batch)
    spill_files: list[Path] = field(default_factory=list)  # the files that hold it, in order
    parts: list[_Item] = field(default_factory=list)  # the queued batches it joins (coalesced)
    symbols: pa.Array | None = None  # each row's symbol when it joins batches of several symbols

    @property
    def count(self) -> int:
        """How many submitted batches this item carries."""
        return len(self.spill_files) or len(self.parts) or 1


# What waits is written in few, large transactions: the queued batches of one kind (whatever their
# symbol: one flush writes every symbol of a table) are joined up to this many rows. Batches of
# other tables may be passed over (written next): only the order within a table family counts.
COALESCE_ROWS = 200_000
SKIP_OVER = 1024  # at most this many batches of other tables passed over to join one kind's batches


def _family(kind: str) -> str:
    """Batches whose relative order matters: a table's, and the gap records with the trades."""
    return "agg_trades" if kind == GAP_KIND else kind


def _joined_symbols(items: list[_Item]) -> pa.Array | None:
    """The per-row symbol column of joined items (None when they are all of one symbol)."""
    first = items[0].symbol
    if all(i.symbol == first and i.symbols is None for i in items):
        return None
    cols = [
        i.symbols if i.symbols is not None else pa.repeat(pa.scalar(i.symbol, pa.string()), i.batch.num_rows)
        for i in items
    ]
    return pa.concat_arrays([c.cast(pa.string()) for c in cols])


SPILL_SYMBOL = "__symbol"  # the per-row symbol column of a spill file that holds several symbols
SPILL_AFTER_S = 3.0  # a write failing this long: the database is away, batches go to disk at once
HUNG_AFTER_S = 10.0  # a write unanswered this long (a frozen server): the same
WRITE_TIMEOUT_S = 60.0  # a write unanswered this long is abandoned and tried again on a new connection
SPILL_RETRY_S = 5.0  # after the spill folder was full, how long before spilling is tried again


OnCommit = Callable[[str, str, pa.Table, int], Awaitable[None] | None]
# (kind, symbol or each row's symbol, rows) for every table a source holds
Source = Callable[[], list[tuple[str, str | pa.Array, pa.Table]]]


def _seq_of(path: Path) -> int:
    return int(path.name.split("-", 1)[0])


def _spill_key(path: Path) -> tuple[str, bool]:
    """(kind, gap fill) of a spill file, from its name `{seq}-{kind}-{symbol}[-fill].arrow`: files
    with the same key are replayed together, whatever their symbols."""
    return path.name.split("-", 2)[1], path.name.endswith("-fill.arrow")


def _time_range(kind: str, batch: pa.Table) -> tuple[int | None, int | None]:
    col = SPECS[kind].time_field
    if col not in batch.column_names or batch.num_rows == 0:
        return None, None
    t = batch.column(col)
    return pc.min(t).as_py(), pc.max(t).as_py()


class Writer:
    """Background writer with a bounded queue and spill files; see the module doc.

    Memory is not the buffer of last resort: once a write has failed for `spill_after` seconds (or
    gone unanswered for `hung_after`), the batch being written and every queued one go to spill
    files at once, and so does each new batch until a write commits, so a SIGKILL loses at most that
    window. When spilling fails (the folder's filesystem is full, or `max_spill_bytes` is reached),
    batches stay in memory up to the queue's bounds and the OLDEST in memory is dropped beyond them:
    counted in stats, logged, and recorded in ingest_events (kind 'dropped': table, symbol, rows, time
    range) once the database answers again. Batches are written in submission order (`seq`), from
    memory or disk alike.

    `add_source(fn)`: when the writer has nothing else to do it takes what `fn()` returns (a list of
    (kind, symbol, batch)), so a live collector's rows are written as soon as the writer is free: a
    quiet stream commits at once, a busy one in batches of what arrived during the previous commit.
    `poke()` tells an idle writer that a source has rows.
    """

    def __init__(
        self,
        dsn: str,
        spill_dir: Path,
        *,
        max_queue_batches: int = 256,
        max_queue_rows: int = 2_000_000,
        pool_size: int = 2,
        max_backoff: float = 5.0,
        close_timeout: float = 60.0,
        on_commit: OnCommit | None = None,
        spill_after: float = SPILL_AFTER_S,
        hung_after: float = HUNG_AFTER_S,
        write_timeout: float = WRITE_TIMEOUT_S,
        max_spill_bytes: int | None = None,
        pull_interval: float = 0.1,
        min_pull_interval: float = 0.025,
    ) -> None:
        self.dsn = dsn
        # Sources are taken at most every `pull_window()` s: half as long as a write takes (a
        # moving average), between the two bounds. Quiet, a write takes a few ms, so rows are
        # queryable a few ms after they arrive; busy, writes take longer and so does the window, so
        # batches grow with the load (and rows arriving during a write join the next one anyway).
        self.pull_interval = pull_interval
        self.min_pull_interval = min_pull_interval
        self._write_s = min_pull_interval  # moving average of a pulled write's duration
        self.spill_dir = Path(spill_dir)
        self.max_queue_batches = max_queue_batches
        self.max_queue_rows = max_queue_rows
        self.pool_size = pool_size
        self.max_backoff = max_backoff
        self.close_timeout = close_timeout
        self.on_commit = on_commit
        self.spill_after = spill_after
        self.hung_after = hung_after
        self.write_timeout = write_timeout
        self.max_spill_bytes = max_spill_bytes
        self.stats = WriterStats()
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._spilled: list[Path] = []  # sorted by sequence number
        self._spill_bytes = 0
        self._seq = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._current: _Item | None = None  # the batch being written (popped from the queue)
        self._singles = 0  # after a joined batch was refused: take this many batches one by one
        self._sources: list[Source] = []
        self._last_pull = 0.0
        self._pulled_after = 1 << 62  # no pull yet
        self._attempt_since: float | None = None  # monotonic: first try of the current batch
        self._partitions = DayPartitions()  # the day partitions this writer knows exist
        self._failing = False  # the current batch's last try failed
        self.down = False  # the database is taken as away: batches go to disk
        self.down_since: float | None = None  # time.time() of the first failed write of this outage
        self.spill_full = False  # the last spill failed for want of space
        self._spill_retry_at = 0.0
        self._drops: list[dict[str, object]] = []  # not yet recorded in ingest_events

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.spill_dir.glob("*.arrow.tmp"):
            tmp.unlink(missing_ok=True)  # a spill that never finished writing: its batch is still upstream
        leftovers = sorted((p for p in self.spill_dir.glob("*.arrow") if p.is_file()), key=_seq_of)
        self._spilled = leftovers
        self._spill_bytes = sum(p.stat().st_size for p in leftovers)
        self._seq = 1 + max((_seq_of(p) for p in leftovers), default=0)
        if leftovers:
            log.info("replaying %d spill files left by an earlier run", len(leftovers))
        self._task = asyncio.create_task(self._run(), name="writer")
        self._watch_task = asyncio.create_task(self._watch(), name="writer-watch")

    def add_source(self, source: Source) -> None:
        self._sources.append(source)

    def remove_source(self, source: Source) -> None:
        with contextlib.suppress(ValueError):
            self._sources.remove(source)

    def poke(self) -> None:
        """A source has rows: an idle writer takes them now."""
        if self._current is None:
            self._wake.set()

    def _memory_pending(self) -> bool:
        cur = self._current
        return bool(self._queue) or (cur is not None and not cur.spill_files)

    async def flush(self, timeout: float | None = None, *, give_up_when_down: bool = False) -> bool:
        """Wait until everything submitted so far is committed; False on timeout. With
        `give_up_when_down`, also False as soon as the database is taken as away and everything is
        on disk (or cannot be: the spill folder is full): a stop then does not wait for it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue or self._spilled or self._current is not None:
            if give_up_when_down and self.down and (not self._memory_pending() or self.spill_full):
                return False
            self._idle.clear()
            self._wake.set()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait = 0.25 if give_up_when_down else remaining
            if wait is not None and remaining is not None:
                wait = min(wait, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), wait)
        return True

    async def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout` s, default `close_timeout`; at once when the database is away),
        then stop. What could not be written stays in spill files, replayed by the next writer on the
        same folder: a collector asked to stop while the database is away still stops."""
        flushed = await self.flush(self.close_timeout if timeout is None else timeout, give_up_when_down=True)
        for task in (self._task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not flushed:
            lost = self._spill_memory(final=True)
            log.warning(
                "writer closed with %d batches in spill files, replayed on the next start%s",
                len(self._spilled),
                f"; {lost} batches lost (no spill space, no database)" if lost else "",
            )
        if self._drops:
            for d in self._drops:
                log.error("dropped before reaching the database (not recorded in ingest_events)", extra=d)
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def __aenter__(self) -> Writer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- submit --------------------------------------------------------------------------------
    async def submit(self, kind: str, symbol: str, batch: pa.Table, *, gap_fill: bool = False) -> None:
        """Hand a batch over (never waits for the database); see submit_nowait."""
        self.submit_nowait(kind, symbol, batch, gap_fill=gap_fill)

    def submit_nowait(self, kind: str, symbol: str, batch: pa.Table, *, gap_fill: bool = False) -> None:
        """Queue a batch, or spill it to disk when the queue is full or the database is away."""
        if kind not in SPECS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(SPECS)}")
        if batch.num_rows == 0:
            return
        if kind != GAP_KIND:  # gap records are bookkeeping, not rows
            self.stats.batches_submitted += 1
            self.stats.rows_submitted += batch.num_rows
        self._enqueue(_Item(kind, symbol, batch, time.monotonic(), seq=self._next_seq(), gap_fill=gap_fill))
        self._wake.set()

    def submit_many(self, kind: str, batches: list[tuple[str, pa.Table]], *, gap_fill: bool = False) -> None:
        """Queue the batches of several symbols of one kind as ONE item (one queue slot, one spill
        file, one transaction): what a collector holds for all its symbols costs the queue, the
        spill folder and the database the same whether it spans 2 symbols or 300."""
        if kind not in SPECS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(SPECS)}")
        batches = [(sym, b) for sym, b in batches if b.num_rows]
        if not batches:
            return
        if len(batches) == 1:
            self.submit_nowait(kind, batches[0][0], batches[0][1], gap_fill=gap_fill)
            return
        joined = pa.concat_tables([conform(kind, b) for _, b in batches])
        names = pa.array([sym for sym, _ in batches], pa.string())
        counts = np.array([b.num_rows for _, b in batches], dtype=np.int64)
        symbols = pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(np.arange(len(batches), dtype=np.int32), counts)), names
        )
        self.submit_rows(kind, joined, symbols, gap_fill=gap_fill)

    def submit_rows(self, kind: str, batch: pa.Table, symbols: pa.Array, *, gap_fill: bool = False) -> None:
        """Queue rows of several symbols (`symbols`: each row's, a string or dictionary array) as ONE
        item, like submit_many, for a caller that keeps them in one table already."""
        if kind not in SPECS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(SPECS)}")
        if batch.num_rows == 0:
            return
        if len(symbols) != batch.num_rows:
            raise ValueError(f"{len(symbols)} symbols for {batch.num_rows} rows")
        if kind != GAP_KIND:
            self.stats.batches_submitted += 1
            self.stats.rows_submitted += batch.num_rows
        first = symbols[0].as_py()
        self._enqueue(
            _Item(
                kind, first, batch, time.monotonic(), seq=self._next_seq(), gap_fill=gap_fill, symbols=symbols
            )
        )
        self._wake.set()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enqueue(self, item: _Item) -> None:
        full = (
            len(self._queue) >= self.max_queue_batches
            or self._queued_rows + item.batch.num_rows > self.max_queue_rows
        )
        if (self.down or full) and self._spill(item):
            return
        self._queue.append(item)
        self._queued_rows += item.batch.num_rows
        self._trim_memory()

    def _trim_memory(self) -> None:
        """Over the queue's bounds with nowhere to spill: drop the oldest batches in memory."""
        while len(self._queue) > 1 and (
            len(self._queue) > self.max_queue_batches or self._queued_rows > self.max_queue_rows
        ):
            old = self._queue.popleft()
            self._queued_rows -= old.batch.num_rows
            self._drop(old, "spill folder full while the database was away")

    def _drop(self, item: _Item, reason: str) -> None:
        lo, hi = _time_range(item.kind, item.batch)
        detail: dict[str, object] = {
            "table": SPECS[item.kind].table,
            "symbol": item.symbol,
            "rows": item.batch.num_rows,
            "from_ms": lo,
            "to_ms": hi,
            "from": _iso(lo),
            "to": _iso(hi),
            "reason": reason,
        }
        self.stats.batches_dropped += 1
        self.stats.rows_dropped += item.batch.num_rows
        self._drops.append(detail)
        log.error("batch dropped: spill folder full and the database away", extra=detail)

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._spilled)

    @property
    def spill_files(self) -> int:
        """Batches waiting in spill files (finished files only: a .tmp is not a batch)."""
        return len(self._spilled)

    @property
    def idle(self) -> bool:
        """Nothing submitted is waiting: every batch so far has committed (or been refused)."""
        return not self._queue and not self._spilled and self._current is None

    def spill_space(self) -> dict[str, object]:
        """Bytes in spill files, the limit (setting) and the free space of the folder's filesystem."""
        out: dict[str, object] = {"spill_bytes": self._spill_bytes, "max_spill_bytes": self.max_spill_bytes}
        try:
            st = os.statvfs(self.spill_dir)
            out["fs_free_bytes"] = st.f_bavail * st.f_frsize
            out["fs_total_bytes"] = st.f_blocks * st.f_frsize
        except OSError:
            pass
        out["spill_full"] = self.spill_full
        return out

    # -- spill files ---------------------------------------------------------------------------
    def _spill(self, item: _Item) -> bool:
        """Write one batch to its spill file (temporary name, fsync, rename); False when there is no
        room (ENOSPC or `max_spill_bytes`): nothing is left behind, the batch stays with the caller."""
        if self.spill_full and time.monotonic() < self._spill_retry_at:
            return False
        fill = "-fill" if item.gap_fill else ""
        label = item.symbol if item.symbols is None else "many"
        name = f"{item.seq:012d}-{item.kind}-{label}{fill}.arrow"
        path = self.spill_dir / name
        tmp = path.with_suffix(".arrow.tmp")
        meta = {
            b"kind": item.kind.encode(),
            b"symbol": item.symbol.encode(),
            b"gap_fill": b"1" if item.gap_fill else b"0",
        }
        table = conform(item.kind, item.batch)
        if item.symbols is not None:  # several symbols: each row's symbol kept in the file
            table = table.append_column(SPILL_SYMBOL, item.symbols.cast(pa.string()))
        table = table.replace_schema_metadata(meta)
        try:
            if self.max_spill_bytes is not None and self._spill_bytes + table.nbytes > self.max_spill_bytes:
                raise OSError(28, f"spill limit of {self.max_spill_bytes} bytes reached")
            with open(tmp, "wb") as fh:
                with ipc.new_file(fh, table.schema) as w:
                    w.write_table(table)
                fh.flush()
                os.fsync(fh.fileno())
            size = tmp.stat().st_size
            if self.max_spill_bytes is not None and self._spill_bytes + size > self.max_spill_bytes:
                raise OSError(28, f"spill limit of {self.max_spill_bytes} bytes reached")
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self.spill_full:
                log.error(
                    "spill folder full: keeping the newest batches in memory, dropping the oldest beyond "
                    "the queue's bounds",
                    extra={"folder": str(self.spill_dir), "error": f"{type(exc).__name__}: {exc}"},
                )
            self.spill_full = True
            self._spill_retry_at = time.monotonic() + SPILL_RETRY_S
            return False
        if self.spill_full:
            log.warning("spill folder has room again", extra={"folder": str(self.spill_dir)})
        self.spill_full = False
        bisect.insort(self._spilled, path, key=_seq_of)
        self._spill_bytes += size
        self.stats.batches_spilled += 1
        return True

    def _spill_memory(self, *, final: bool = False) -> int:
        """Move the batch being written and every queued batch to spill files, oldest first. The
        batch being written keeps going, now backed by its files. Returns how many could not be
        spilled (dropped when `final`: the process is stopping)."""
        cur = self._current
        if cur is not None and not cur.spill_files:
            parts = cur.parts or [cur]
            files = []
            for part in parts:
                if not self._spill(part):
                    break
                files.append(self._spilled[self._spilled_index(part.seq)])
            if len(files) == len(parts):
                cur.spill_files, cur.parts = files, []
            else:  # partly on disk: the rest goes back to memory, the written part stays a file
                for f in files:
                    self._spilled.remove(f)
                    self._spill_bytes -= f.stat().st_size
                    f.unlink(missing_ok=True)
                    self.stats.batches_spilled -= 1
        while self._queue:
            item = self._queue[0]
            if not self._spill(item):
                break
            self._queue.popleft()
            self._queued_rows -= item.batch.num_rows
        lost = 0
        if final:
            rest = [
                p
                for i in ([cur] if cur is not None and not cur.spill_files else [])
                for p in (i.parts or [i])
            ]
            for item in [*rest, *self._queue]:
                self._drop(item, "stopped with the database away and the spill folder full")
                lost += 1
            self._queue.clear()
            self._queued_rows = 0
            self._current = None
        return lost

    def _spilled_index(self, seq: int) -> int:
        i = bisect.bisect_left(self._spilled, seq, key=_seq_of)
        return i

    def _unspill(self, path: Path) -> None:
        with contextlib.suppress(ValueError):
            self._spilled.remove(path)
        with contextlib.suppress(OSError):
            self._spill_bytes -= path.stat().st_size
        path.unlink(missing_ok=True)

    @staticmethod
    def _read_spill(path: Path) -> _Item:
        with ipc.open_file(path) as r:
            table = r.read_all()
        meta = table.schema.metadata or {}
        symbols = None
        if SPILL_SYMBOL in table.column_names:
            symbols = table.column(SPILL_SYMBOL).combine_chunks()
            table = table.drop_columns([SPILL_SYMBOL])
        return _Item(
            meta[b"kind"].decode(),
            meta[b"symbol"].decode(),
            table.replace_schema_metadata(None),
            time.monotonic(),
            seq=_seq_of(path),
            gap_fill=meta.get(b"gap_fill") == b"1",
            spill_files=[path],
            symbols=symbols,
        )

    # -- the loop ------------------------------------------------------------------------------
    def _pull(self) -> None:
        """Take what the sources hold (the writer has nothing else to write)."""
        self._last_pull = time.monotonic()
        self._pulled_after = self._seq  # items of a higher seq come from this pull
        for source in self._sources:
            by_kind: dict[str, list[tuple[str, pa.Table]]] = {}
            for kind, symbol, batch in source():
                if not batch.num_rows:
                    continue
                if isinstance(symbol, str):
                    by_kind.setdefault(kind, []).append((symbol, batch))
                else:  # already one table of several symbols, with each row's
                    self.submit_rows(kind, batch, symbol)
            for kind, batches in by_kind.items():
                self.submit_many(kind, batches)  # one item per kind and pull, whatever the symbols

    def _next(self) -> _Item | None:
        if not self._queue and not self._spilled and self._sources and not self.down:
            self._pull()
        single = self._singles > 0
        self._singles = max(0, self._singles - 1)
        from_memory = bool(self._queue) and (
            not self._spilled or self._queue[0].seq < _seq_of(self._spilled[0])
        )
        if from_memory:
            parts = [self._queue.popleft()]
            head = parts[0]
            rows = head.batch.num_rows
            limit = _seq_of(self._spilled[0]) if self._spilled else None
            passed: list[_Item] = []  # batches of other tables, left in the queue in their order
            while not single and self._queue:
                nxt = self._queue[0]
                if limit is not None and nxt.seq > limit:
                    break
                if _family(nxt.kind) != _family(head.kind):
                    if len(passed) >= SKIP_OVER:
                        break
                    passed.append(self._queue.popleft())
                    continue
                if (nxt.kind, nxt.gap_fill) != (
                    head.kind,
                    head.gap_fill,
                ) or rows + nxt.batch.num_rows > COALESCE_ROWS:
                    break
                parts.append(self._queue.popleft())
                rows += nxt.batch.num_rows
            self._queue.extendleft(reversed(passed))
            self._queued_rows -= rows
            if len(parts) == 1:
                return head
            batch = pa.concat_tables([conform(head.kind, p.batch) for p in parts])
            return _Item(
                head.kind, head.symbol, batch, min(p.submitted for p in parts), seq=head.seq,
                gap_fill=head.gap_fill, parts=parts, symbols=_joined_symbols(parts),
            )  # fmt: skip
        items: list[_Item] = []
        limit = self._queue[0].seq if self._queue else None
        for path in list(self._spilled):
            if items and (
                single
                or _spill_key(path) != _spill_key(items[0].spill_files[0])
                or sum(i.batch.num_rows for i in items) >= COALESCE_ROWS
                or (limit is not None and _seq_of(path) > limit)
            ):
                break
            try:
                items.append(self._read_spill(path))
            except (OSError, pa.ArrowInvalid, KeyError) as exc:
                if items:
                    break  # the good ones first; this file is dealt with on the next call
                log.error("spill file unreadable, moved aside", extra={"file": str(path), "error": str(exc)})
                self._spilled.remove(path)
                self._reject_file(path)
                return self._next()
        if not items:
            return None
        if len(items) == 1:
            return items[0]
        first = items[0]
        batch = pa.concat_tables([i.batch for i in items])
        return _Item(
            first.kind,
            first.symbol,
            batch,
            first.submitted,
            seq=first.seq,
            gap_fill=first.gap_fill,
            spill_files=[p for i in items for p in i.spill_files],
            symbols=_joined_symbols(items),
        )

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=10)
        return self._conn

    async def _watch(self) -> None:
        """Take the database as away once a write has failed for `spill_after` s or hung for
        `hung_after` s: everything in memory goes to disk now, and new batches follow."""
        while True:
            await asyncio.sleep(0.25)
            since = self._attempt_since
            if since is None:
                continue
            age = time.monotonic() - since
            if (self._failing and age >= self.spill_after) or age >= self.hung_after:
                if not self.down:
                    self.down = True
                    log.warning(
                        "database unavailable for %.0f s: batches go to spill files until it answers", age
                    )
                if self._memory_pending():
                    self._spill_memory()

    def pull_window(self) -> float:
        """How long after a pull the sources are taken again (see __init__)."""
        return min(self.pull_interval, max(self.min_pull_interval, 0.5 * self._write_s))

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if self._sources and not self._queue and not self._spilled and not self.down:
                # what arrives meanwhile joins the next pull: commits stay few on a busy stream
                pause = self._last_pull + self.pull_window() - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
            item = self._next()
            if item is None:
                self._current = None
                self._attempt_since = None
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            pulled = item.seq > self._pulled_after
            started = time.monotonic()
            self._current = item
            self._attempt_since = time.monotonic()
            other_failures = 0
            while True:
                try:
                    conn = await self._connection()
                    inserted = await asyncio.wait_for(
                        write_rows(
                            conn,
                            item.kind,
                            item.batch,
                            item.symbol if item.symbols is None else item.symbols,
                            gap_fill=item.gap_fill,
                            partitions=self._partitions,
                        ),
                        self.write_timeout,
                    )
                except Exception as exc:
                    if self._conn is not None:  # whatever state it is in, the next try starts clean
                        self._conn.terminate()
                        self._conn = None
                    connection_error = is_connection_error(exc)
                    if not connection_error:
                        other_failures += 1
                        if is_data_error(exc) or other_failures >= OTHER_ERROR_TRIES:
                            self._reject(item, exc)
                            break
                    self._failing = True
                    if self.down_since is None:
                        self.down_since = time.time()
                    self.stats.db_errors += 1
                    log.warning(
                        "database unavailable, retrying" if connection_error else "batch failed, retrying",
                        extra={
                            "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                            "backoff_s": round(backoff, 2),
                        },
                    )
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                backoff = 0.1
                self._failing = False
                if self.down:
                    log.warning("database answers again: replaying spill files")
                self.down = False
                self.down_since = None
                if pulled:
                    self._write_s += 0.2 * (time.monotonic() - started - self._write_s)
                await self._committed(item, inserted)
                break
            self._current = None
            self._attempt_since = None

    async def _committed(self, item: _Item, per_symbol: dict[str, int]) -> None:
        inserted = sum(per_symbol.values())
        s = self.stats
        s.last_commit_unix = time.time()
        for path in item.spill_files:
            self._unspill(path)
            s.batches_replayed += 1
        if self._drops:
            await self._record_drops()
        if item.kind == GAP_KIND:
            s.gaps_recorded += item.batch.num_rows
            return
        s.batches_committed += item.count
        s.rows_committed += item.batch.num_rows
        s.rows_inserted += inserted
        s.latencies_ms.append((time.monotonic() - item.submitted) * 1000)
        if self.on_commit is not None:
            for symbol, batch in _by_symbol(item):
                result = self.on_commit(item.kind, symbol, batch, per_symbol.get(symbol, 0))
                if asyncio.iscoroutine(result):
                    await result

    async def _record_drops(self) -> None:
        """The batches dropped while the database was away, one ingest_events row each."""
        drops = self._drops
        try:
            conn = await self._connection()
            await conn.executemany(
                "INSERT INTO ingest_events (collector, symbol, kind, detail) VALUES ('writer', $1, 'dropped', $2::jsonb)",
                [(str(d["symbol"]), json.dumps(d)) for d in drops],
            )
        except Exception as exc:  # kept for the next commit
            log.warning("dropped batches not recorded yet", extra={"error": str(exc)[:200]})
            return
        self._drops = self._drops[len(drops) :]

    def _reject(self, item: _Item, exc: BaseException) -> None:
        if item.count == 1 and item.symbols is not None and not item.spill_files:
            # one submitted item of several symbols: split by symbol, so only the bad one is set aside
            item.parts = [
                _Item(item.kind, sym, batch, item.submitted, seq=item.seq, gap_fill=item.gap_fill)
                for sym, batch in _by_symbol(item)
            ]
        if item.count > 1:
            # A joined batch was refused: nothing of it committed. Its batches go one by one, so
            # only the bad one is set aside.
            log.info("joined batch refused, writing its %d batches one by one", item.count)
            self._singles = item.count
            if item.parts:
                self._queue.extendleft(reversed(item.parts))
                self._queued_rows += item.batch.num_rows
            return
        self.stats.batches_rejected += 1
        log.error(
            "batch refused by the database, moved to rejected/",
            extra={
                "kind": item.kind,
                "symbol": item.symbol,
                "rows": item.batch.num_rows,
                "error": f"{type(exc).__name__}: {str(exc)[:500]}",
            },
        )
        if not item.spill_files:
            if not self._spill(item):
                self._drop(item, "refused by the database and no room to keep it in rejected/")
                return
            item.spill_files = [self._spilled[self._spilled_index(item.seq)]]
        path = item.spill_files[0]
        with contextlib.suppress(ValueError):
            self._spilled.remove(path)
        with contextlib.suppress(OSError):
            self._spill_bytes -= path.stat().st_size
        self._reject_file(path)

    def _reject_file(self, path: Path) -> None:
        target = self.spill_dir / "rejected"
        target.mkdir(exist_ok=True)
        os.replace(path, target / path.name)


def _by_symbol(item: _Item) -> list[tuple[str, pa.Table]]:
    """The item's rows per symbol (what on_commit is told: one call per symbol of a flush)."""
    if item.symbols is None:
        return [(item.symbol, item.batch)]
    names, codes, _ = _symbol_codes(item.symbols, item.batch.num_rows)
    order = np.argsort(codes, kind="stable")
    starts, ends = _groups(codes[order])
    taken = item.batch.take(pa.array(order))
    return [
        (names[int(codes[order][a])], taken.slice(int(a), int(b - a)))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


async def merge_table(conn: asyncpg.Connection, table: str, data: pa.Table, types: dict[str, str]) -> int:
    """Binary COPY of `data` into a temporary staging table, then INSERT ... ON CONFLICT DO NOTHING.

    For the archive-only tables the Writer does not cover (book_depth_bands, futures_metrics,
    price_klines). `types` names the table's columns in COPY order with the PostgreSQL types they are
    sent as (the table's own, or one the INSERT casts to it); each is a column of `data`
    (timestamptz columns as epoch milliseconds). Returns the number of new rows.
    """
    if data.num_rows == 0:
        return 0
    payload = encode_copy_binary(data, [ColumnSpec(c, t) for c, t in types.items()])
    stage = f"stage_{table}"
    cols = ", ".join(types)
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({', '.join(f'{c} {t}' for c, t in types.items())}) "
            "ON COMMIT DELETE ROWS"
        )
        await copy_binary(conn, stage, payload, list(types))
        status = await conn.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
        )
        inserted = int(status.split()[-1])
        if inserted and "ts" in data.column_names:
            for symbol in pc.unique(data.column("symbol")).to_pylist():
                times = data.filter(pc.equal(data.column("symbol"), symbol)).column("ts")
                await invalidations.log_range(
                    conn, table, symbol, pc.min(times).as_py(), pc.max(times).as_py()
                )
    return inserted


async def open_writer(settings: Settings, dsn: str) -> Writer:
    """A started Writer spilling under the project folder (HOME/spill), at most
    `settings.spill_max_mb` MB of it when set (MICROSTRUCTURE_SPILL_MAX_MB)."""
    limit = getattr(settings, "spill_max_mb", None)
    writer = Writer(dsn, spill_folder(settings.home), max_spill_bytes=None if limit is None else limit << 20)
    await writer.start()
    return writer
