"""Hourly Parquet partitions of the raw tables and the feature views, incremental and idempotent.

One run (`export_once`), per type and symbol:
- the hours to look at: every closed hour (its end plus the lateness allowance has passed) after the
  type's watermark for the output folder (the last hour a run looked at; none yet: the first hour
  of data), plus the hours that writes logged in the invalidation log touched since this output's
  cursor (consumer `export:<type>:<folder hash>`). For feature types a write touches its hour and
  the rest of that UTC day (cvd runs from 00:00; carried open interest, settled funding and the
  deltas reach the following bars) plus the next day's first hour;
- the rows of those hours are read with ADBC (binary COPY into Arrow, no per-row Python), a day (or
  a few days of bars) at a time, and cut by hour;
- a file is written only when its bytes differ from what is on disk (the same rows give the same
  bytes): to a temporary name, fsynced, renamed, the folder fsynced; an unchanged hour keeps its
  bytes and its mtime. The day's manifest (rows, min/max time, sha256, bytes per hour) follows;
- a feature hour holding bars that were not final when it was written (their `final` column false:
  the stream had not yet run past them, docs/FEATURES.md "Point in time") is exported again by
  every run for RECHECK_FINAL after it, since what makes a bar final (later trades, the next
  snapshot) is written in a later hour, which the log does not tie to it;
- the watermark and the log cursor move only after the type's files are on disk, so a run killed at
  any point is completed by running it again (it recomputes, finds equal bytes, writes the rest).
An hour with no rows has no file; a file whose rows were later deleted (retention) is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microstructure.config import unusable_dir
from microstructure.db.connect import default_database_url
from microstructure.export.partitions import (
    Manifest,
    day_dir,
    file_entry,
    hour_path,
    parquet_bytes,
    remove_stale_temporaries,
    sha256_file,
    write_atomically,
)
from microstructure.export.types import SPAN_TABLES, TYPES, ExportType
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DEFAULT_LATENESS = 10.0  # seconds: FEATURES.md's lateness allowance
RECHECK_FINAL = timedelta(days=2)  # how long feature hours with non-final bars are exported again
COMPRESSIONS = ("snappy", "zstd")
STATE_FILE = ".export-state.json"
LOCK_FILE = ".export.lock"
FEATURE_QUERY_SPAN = timedelta(days=7)  # feature bars are read a week at a time


class ExportError(RuntimeError):
    """The export cannot proceed (bad output folder, ...); one line."""


def floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t else f + HOUR


@dataclass
class TypeReport:
    written: int = 0  # files new or changed
    unchanged: int = 0  # hours whose file already had these bytes
    rows: int = 0  # rows in files written
    hours: int = 0  # hours looked at
    invalidated: int = 0  # of which because a write touched them


@dataclass
class ExportReport:
    output_dir: Path
    types: dict[str, TypeReport] = field(default_factory=lambda: defaultdict(TypeReport))
    seconds: float = 0.0
    refreshed: str = ""

    @property
    def files_written(self) -> int:
        return sum(t.written for t in self.types.values())

    def summary_lines(self) -> list[str]:
        out = [f"export to {self.output_dir}: {self.files_written} files written in {self.seconds:.1f} s"]
        if self.refreshed:
            out.append(f"  {self.refreshed}")
        for name, t in self.types.items():
            out.append(
                f"  {name}: {t.written} written ({t.rows:,} rows), {t.unchanged} unchanged, "
                f"{t.hours} hours looked at ({t.invalidated} touched by writes since the last run)"
            )
        return out


# ---------------------------------------------------------------- state of an output folder


@dataclass
class ExportState:
    path: Path
    watermarks: dict[str, dict[str, str]]  # type -> symbol -> end (ISO) of the last hour looked at

    @classmethod
    def load(cls, root: Path) -> ExportState:
        path = root / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        return cls(path, {k: dict(v) for k, v in data.get("watermarks", {}).items()})

    def get(self, type_name: str, symbol: str) -> datetime | None:
        v = self.watermarks.get(type_name, {}).get(symbol)
        return datetime.fromisoformat(v) if v else None

    def set(self, type_name: str, symbol: str, t: datetime) -> None:
        self.watermarks.setdefault(type_name, {})[symbol] = t.isoformat()

    def save(self) -> None:
        body = {"version": 1, "watermarks": self.watermarks}
        write_atomically(self.path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())


def consumer_name(root: Path, type_name: str) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return f"export:{type_name}:{digest}"


def check_output_dir(root: Path) -> Path:
    """The output folder, created and writable, or one ExportError line naming it."""
    root = root.expanduser().resolve()
    if why := unusable_dir(root):
        raise ExportError(f"--output-dir {root}: {why}")
    return root


# ---------------------------------------------------------------- reading the database


def _to_millis(table: pa.Table) -> pa.Table:
    """Timestamp columns as int64 milliseconds since the epoch; the driver's field metadata dropped."""
    cols, fields = [], []
    for f, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(f.type):
            us = pc.cast(col, pa.timestamp("us", tz="UTC")).cast(pa.int64())
            col = pc.divide(us, pa.scalar(1000, pa.int64()))
            f = pa.field(f.name, pa.int64(), nullable=f.name != "timestamp")
        else:
            f = pa.field(f.name, f.type, nullable=f.nullable)
        cols.append(col)
        fields.append(f)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


# Binary COPY field types a fixed-width row can hold: numpy big-endian dtype, Arrow type
FIXED = {
    "timestamptz": (">i8", pa.int64()),  # microseconds since 2000-01-01 -> ms since the epoch
    "int8": (">i8", pa.int64()),
    "float8": (">f8", pa.float64()),
    "bool": ("u1", pa.bool_()),
}
PG_EPOCH_US = 946_684_800_000_000


def decode_fixed_copy(data: bytes | memoryview, columns: Sequence[tuple[str, str]]) -> pa.Table | None:
    """A binary COPY stream whose rows are all fixed-width and NULL-free -> Arrow, vectorised (one
    numpy structured view of the whole body). None when a row does not fit (a NULL): read it otherwise."""
    body = memoryview(data)[19:-2]  # PGCOPY header (no extension) ... trailer -1
    fields = [("n", ">i2")]
    for i, (_, pg) in enumerate(columns):
        fields += [(f"len{i}", ">i4"), (f"v{i}", FIXED[pg][0])]
    dtype = np.dtype(fields)
    if len(body) % dtype.itemsize:
        return None
    rows = np.frombuffer(body, dtype=dtype)
    for i, (_, pg) in enumerate(columns):
        if len(rows) and not np.all(rows[f"len{i}"] == np.dtype(FIXED[pg][0]).itemsize):
            return None
    cols = {}
    for i, (name, pg) in enumerate(columns):
        v = rows[f"v{i}"]
        if pg == "timestamptz":
            v = (v.astype(np.int64) + PG_EPOCH_US) // 1000
        elif pg == "bool":
            v = v.astype(bool)
        else:
            v = v.astype(v.dtype.newbyteorder("="))
        cols[name] = pa.array(v, FIXED[pg][1])
    return pa.table(cols)


def _with_symbol(table: pa.Table, symbol: str) -> pa.Table:
    """Every file's last column: the contract (so a glob over symbols keeps it). Built from its
    buffers (offsets and the repeated bytes), not from a Python list of n strings."""
    n, raw = table.num_rows, symbol.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(raw))
    col = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw * n))
    return table.append_column(pa.field("symbol", pa.string(), nullable=False), col)


def order_ties(table: pa.Table, key: str = "trade_id") -> pa.Table:
    """Rows read in timestamp order (ORDER BY ts alone: the time index's order, no sort on the
    server) put in (timestamp, `key`) order: rows of equal timestamps sorted by key. One vectorised
    check; the sort (stable, numpy) only when some tie is out of order."""
    if table.num_rows < 2 or key not in table.column_names:
        return table
    ts = table.column("timestamp").to_numpy()
    ids = table.column(key).to_numpy()
    if not np.any((ts[1:] == ts[:-1]) & (ids[1:] < ids[:-1])):
        return table
    return table.take(pa.array(np.lexsort((ids, ts))))


def default_read_connections() -> int:
    """Connections an export reads on at once (MICROSTRUCTURE_EXPORT_READERS, default: the CPUs,
    at most 4): each range's binary COPY is one server process's work."""
    import os

    raw = os.environ.get("MICROSTRUCTURE_EXPORT_READERS")
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            from microstructure.config import SettingError

            raise SettingError(f"MICROSTRUCTURE_EXPORT_READERS: expected an integer, got {raw!r}") from None
    return max(1, min(4, os.cpu_count() or 1))


def _decode_chunks(chunks: list[bytes], columns: Sequence[tuple[str, str]], symbol: str) -> pa.Table | None:
    """A range's COPY chunks -> the file's table (in a worker thread: numpy and Arrow release the GIL)."""
    table = decode_fixed_copy(b"".join(chunks), columns)
    return None if table is None else order_ties(_with_symbol(table, symbol))


class Reader:
    """Query results straight into Arrow: binary COPY decoded by numpy where every column is
    fixed-width (aggtrades), ADBC (binary COPY inside the driver) for the rest. Async: the next
    ranges are read (on up to `parallel` connections at once, fixed-width types) while the last
    one is encoded and written."""

    def __init__(self, dsn: str, parallel: int | None = None) -> None:
        self.dsn = dsn
        self.parallel = parallel or default_read_connections()
        self._adbc: Any = None
        self._adbc_lock = asyncio.Lock()
        self._pg: Any = None
        self._copiers: list[Any] = []  # connections for the range reads, opened as needed
        self._idle: asyncio.Queue[Any] = asyncio.Queue()

    async def __aenter__(self) -> Reader:
        import asyncpg

        self._pg = await asyncpg.connect(self.dsn, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self._copiers:
            with contextlib.suppress(Exception):
                await c.close()
        if self._pg is not None:
            await self._pg.close()
        if self._adbc is not None:
            await asyncio.to_thread(self._adbc.close)

    @contextlib.asynccontextmanager
    async def _copier(self):  # type: ignore[no-untyped-def]
        """A connection of our own for one range's COPY (the main one keeps the log and the state)."""
        import asyncpg

        if self._idle.empty() and len(self._copiers) < self.parallel:
            c = await asyncpg.connect(self.dsn, timeout=10)
            self._copiers.append(c)
        else:
            c = await self._idle.get()
        try:
            yield c
        finally:
            self._idle.put_nowait(c)

    def _adbc_arrow(self, sql: str, params: Sequence[Any]) -> pa.Table:
        if self._adbc is None:
            import adbc_driver_postgresql.dbapi as adbc

            self._adbc = adbc.connect(self.dsn)
        with self._adbc.cursor() as cur:
            cur.execute(sql, tuple(params))
            t = cur.fetch_arrow_table()
        return pa.Table.from_arrays(t.columns, schema=pa.schema([pa.field(f.name, f.type) for f in t.schema]))

    async def arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        async with self._adbc_lock:  # one ADBC connection, one query at a time
            return await asyncio.to_thread(self._adbc_arrow, sql, params)

    async def rows(self, t: ExportType, symbol: str, lo: datetime, hi: datetime) -> pa.Table:
        """[lo, hi) of a type as its files hold it; safe to call for several ranges at once."""
        if t.fixed_columns is not None:
            chunks: list[bytes] = []

            async def sink(chunk: bytes) -> None:
                chunks.append(chunk)

            async with self._copier() as c:
                await c.copy_from_query(t.sql(), symbol, lo, hi, output=sink, format="binary")
            table = await asyncio.to_thread(_decode_chunks, chunks, t.fixed_columns, symbol)
            if table is not None:
                return table
        return _with_symbol(_to_millis(await self.arrow(t.sql(), (symbol, lo, hi))), symbol)

    async def symbols(self, t: ExportType) -> list[str]:
        out: set[str] = set()
        for table, _ in SPAN_TABLES[t.name]:
            rows = await self._pg.fetch(
                f"WITH RECURSIVE s AS (SELECT min(symbol) AS symbol FROM {table} UNION ALL "
                f"SELECT (SELECT min(symbol) FROM {table} WHERE symbol > s.symbol) FROM s WHERE s.symbol IS NOT NULL) "
                "SELECT symbol FROM s WHERE symbol IS NOT NULL"
            )
            out.update(r["symbol"] for r in rows)
        return sorted(out)

    async def span(self, t: ExportType, symbol: str) -> tuple[datetime, datetime] | None:
        lo = hi = None
        for table, col in SPAN_TABLES[t.name]:
            row = await self._pg.fetchrow(
                f"SELECT min({col}) AS lo, max({col}) AS hi FROM {table} WHERE symbol = $1", symbol
            )
            if row is None or row["lo"] is None:
                continue
            lo = row["lo"] if lo is None else min(lo, row["lo"])
            hi = row["hi"] if hi is None else max(hi, row["hi"])
        return (lo, hi) if lo is not None and hi is not None else None

    async def record_progress(self, root: Path, hour_end: datetime) -> None:
        """The newest hour exported to `root`, for collect all's export-lag metric."""
        await self._pg.execute(
            "INSERT INTO microstructure_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE "
            "SET value = greatest(microstructure_meta.value::timestamptz, excluded.value::timestamptz)::text",
            f"export_watermark:{root}",
            hour_end.isoformat(),
        )

    # the invalidation log, on the same connection
    async def pending(
        self, consumer: str, tables: Sequence[str]
    ) -> tuple[int, list[tuple[str, str, datetime, datetime]]]:
        """Register the consumer (nothing it needs is pruned from now on); what it has not taken."""
        from microstructure.db.invalidation_log import pending_ranges, register_consumer

        _, horizon, ranges = await pending_ranges(self._pg, consumer, tables)
        await register_consumer(self._pg, consumer, horizon)
        return horizon, ranges

    async def advance(self, consumer: str, horizon: int) -> None:
        from microstructure.db.invalidation_log import advance_cursor

        await advance_cursor(self._pg, consumer, horizon)


def read_rows(dsn: str | None, t: ExportType, symbol: str, lo: datetime, hi: datetime) -> pa.Table:
    """One range of a type as its files hold it (the rows of [lo, hi), symbol last). `dsn` None: the CLI's database."""
    dsn = dsn or default_database_url()

    async def go() -> pa.Table:
        async with Reader(dsn) as r:
            return await r.rows(t, symbol, lo, hi)

    return asyncio.run(go())


def known_symbols(dsn: str | None, types: Sequence[str]) -> list[str]:
    """The symbols any of the types has rows for. `dsn` None: the CLI's database."""
    dsn = dsn or default_database_url()

    async def go() -> list[str]:
        async with Reader(dsn) as r:
            return sorted({s for name in types for s in await r.symbols(TYPES[name])})

    return asyncio.run(go())


def query_arrow(dsn: str | None, sql: str, params: Sequence[Any] = ()) -> pa.Table:
    """A query's result as Arrow (ADBC), without the driver's field metadata. `dsn` None: the CLI's database."""
    dsn = dsn or default_database_url()
    r = Reader(dsn)
    try:
        return r._adbc_arrow(sql, params)
    finally:
        if r._adbc is not None:
            r._adbc.close()


# ---------------------------------------------------------------- which hours


def touched_hours(t: ExportType, lo: datetime, hi: datetime) -> Iterable[datetime]:
    """The hours whose file a write of rows in [lo, hi) may change."""
    first = floor_hour(lo)
    if t.is_features:
        last = floor_hour(hi - timedelta(microseconds=1)).replace(hour=0) + DAY + HOUR  # the day + 1 h
    else:
        last = floor_hour(hi - timedelta(microseconds=1)) + HOUR
    h = first
    while h < last:
        yield h
        h += HOUR


# ---------------------------------------------------------------- writing


def nonfinal_hours(root: Path, t: ExportType, symbol: str, lo: datetime, hi: datetime) -> set[datetime]:
    """The hours in [lo, hi) whose feature file holds bars that were not final when written (the
    day manifests' `nonfinal`)."""
    out: set[datetime] = set()
    day = floor_hour(lo).replace(hour=0)
    while day < hi:
        for key, entry in Manifest.load(day_dir(root, t.name, symbol, day)).hours.items():
            h = day.replace(hour=int(key))
            if entry.get("nonfinal") and lo <= h < hi:
                out.add(h)
        day += DAY
    return out


def _runs(hours: Sequence[datetime], span: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted hours grouped into [lo, hi) ranges of consecutive hours, none longer than `span`."""
    out: list[tuple[datetime, datetime]] = []
    for h in hours:
        if out and out[-1][1] == h and h + HOUR - out[-1][0] <= span:
            out[-1] = (out[-1][0], h + HOUR)
        else:
            out.append((h, h + HOUR))
    return out


def _by_hour(table: pa.Table) -> dict[datetime, pa.Table]:
    """Rows (sorted by timestamp) cut into hours: zero-copy slices."""
    if table.num_rows == 0:
        return {}
    ts = np.asarray(table.column("timestamp").to_numpy(), dtype=np.int64)
    hour_ms = ts // 3_600_000
    cuts = np.flatnonzero(np.diff(hour_ms)) + 1
    starts = np.r_[0, cuts]
    ends = np.r_[cuts, len(ts)]
    return {
        datetime.fromtimestamp(int(hour_ms[a]) * 3600, tz=UTC): table.slice(int(a), int(b - a))
        for a, b in zip(starts, ends, strict=True)
    }


def _write_hour(
    root: Path, t: ExportType, symbol: str, hour: datetime, table: pa.Table, compression: str,
    manifests: dict[Path, Manifest], report: TypeReport,
) -> None:  # fmt: skip
    data = parquet_bytes(table, compression)
    entry = file_entry(data, table)
    if t.is_features:  # bars not final yet: the hour is exported again (nonfinal_hours)
        entry["nonfinal"] = table.num_rows - int(pc.sum(table.column("final")).as_py() or 0)
    folder = day_dir(root, t.name, symbol, hour)
    manifest = manifests.get(folder)
    if manifest is None:
        manifest = manifests[folder] = Manifest.load(folder)
    key = f"{hour:%H}"
    path = hour_path(root, t.name, symbol, hour)
    known = manifest.hours.get(key)
    on_disk = known["sha256"] if known and path.is_file() else sha256_file(path)
    if on_disk == entry["sha256"]:
        report.unchanged += 1
        if known != entry:
            manifest.hours[key] = entry
        return
    remove_stale_temporaries(path.parent)
    write_atomically(path, data)
    manifest.hours[key] = entry
    report.written += 1
    report.rows += table.num_rows


def _write_run(
    root: Path, t: ExportType, symbol: str, lo: datetime, hi: datetime, table: pa.Table, compression: str,
    manifests: dict[Path, Manifest], report: TypeReport,
) -> None:  # fmt: skip
    parts = _by_hour(table)
    h = lo
    while h < hi:
        part = parts.get(h)
        if part is not None and part.num_rows:
            _write_hour(root, t, symbol, h, part, compression, manifests, report)
        h += HOUR


async def export_type(
    reader: Reader, root: Path, t: ExportType, state: ExportState, report: TypeReport, *,
    symbols: Sequence[str] | None, start: datetime | None, end: datetime | None, compression: str,
    closed_before: datetime,
) -> None:  # fmt: skip
    consumer = consumer_name(root, t.name)
    horizon, ranges = await reader.pending(consumer, t.sources)
    touched: dict[str, set[datetime]] = defaultdict(set)
    for _table, symbol, lo, hi in ranges:
        touched[symbol].update(touched_hours(t, lo, hi))
    for symbol in symbols if symbols is not None else await reader.symbols(t):
        span = await reader.span(t, symbol)
        if span is None:
            continue
        watermark = state.get(t.name, symbol)
        first = max(floor_hour(start) if start else (watermark or floor_hour(span[0])), floor_hour(span[0]))
        last = min(ceil_hour(end) if end else ceil_hour(span[1] + timedelta(microseconds=1)), closed_before)
        hours = set()
        h = first
        while h < last:  # hours not looked at yet (or the range asked for)
            hours.add(h)
            h += HOUR
        covered = watermark or first  # hours before this were exported by an earlier run
        earlier = touched.get(symbol, set())
        if t.is_features and watermark is not None:
            earlier = earlier | nonfinal_hours(root, t, symbol, watermark - RECHECK_FINAL, watermark)
        again = {
            h for h in earlier
            if h < min(covered, closed_before) and (not start or h >= floor_hour(start)) and (not end or h < end)
        }  # fmt: skip
        report.invalidated += len(again - hours)
        todo = sorted(hours | again)
        report.hours += len(todo)
        manifests: dict[Path, Manifest] = {}
        runs = _runs(todo, FEATURE_QUERY_SPAN if t.is_features else DAY)
        # the next ranges are read (on the reader's connections) while the last one is encoded and
        # written (pyarrow, in a thread); at most `parallel` ranges are held in memory ahead
        ahead: deque[asyncio.Task[pa.Table]] = deque()
        todo_runs = iter(runs)
        try:
            for lo, hi in runs:
                while len(ahead) < reader.parallel and (nxt := next(todo_runs, None)) is not None:
                    ahead.append(asyncio.create_task(reader.rows(t, symbol, *nxt)))
                table = await ahead.popleft()
                await asyncio.to_thread(
                    _write_run, root, t, symbol, lo, hi, table, compression, manifests, report
                )
                del table
        finally:
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)
        for m in manifests.values():
            m.save()
        if not start and not end and (watermark is None or last > watermark):
            state.set(t.name, symbol, last)
            state.save()
            await reader.record_progress(root, last)
    await reader.advance(consumer, horizon)


def export_once(
    dsn: str | None,
    output_dir: Path,
    *,
    types: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    compression: str = "snappy",
    lateness: float = DEFAULT_LATENESS,
    now: datetime | None = None,
    refresh_features: bool = True,
) -> ExportReport:
    """Export every closed hour not exported yet, and every hour writes touched since the last run
    (see the module doc). `start`/`end` (UTC, hour-aligned outward) limit it to a range and leave the
    watermarks alone. `dsn` None: the database the CLI uses (MICROSTRUCTURE_DATABASE_URL, else the
    embedded server under MICROSTRUCTURE_HOME, started if needed)."""
    dsn = dsn or default_database_url()
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression: expected one of {COMPRESSIONS}, got {compression!r}")
    root = check_output_dir(Path(output_dir))
    chosen = [TYPES[n] for n in types] if types else list(TYPES.values())
    report = ExportReport(root)
    started = time.monotonic()
    if refresh_features and any(t.is_features for t in chosen):
        from microstructure.features_sql.refresher import refresh_once

        report.refreshed = asyncio.run(refresh_once(dsn)).summary_lines()[0]
    now = now or datetime.now(tz=UTC)
    closed_before = floor_hour(now - timedelta(seconds=lateness))  # hours ending by then are closed

    async def run() -> None:
        state = ExportState.load(root)
        async with Reader(dsn) as reader:
            for t in chosen:
                await export_type(
                    reader, root, t, state, report.types[t.name], symbols=symbols, start=start, end=end,
                    compression=compression, closed_before=closed_before,
                )  # fmt: skip

    with output_lock(root):
        asyncio.run(run())
    report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def output_lock(root: Path) -> Iterator[None]:
    """One export at a time per output folder (a cron run and a --follow on the same tree)."""
    import fcntl

    fh = open(root / LOCK_FILE, "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(f"another export is writing to {root} (lock {root / LOCK_FILE})") from None
        yield
    finally:
        fh.close()


async def follow(
    dsn: str | None, output_dir: Path, stop: asyncio.Event, *, poll: float = 60.0, lateness: float = DEFAULT_LATENESS,
    **kw: Any,
) -> ExportReport:  # fmt: skip
    """Export each hour once it has closed (plus the lateness allowance) and re-export hours writes
    changed, until `stop`; a restart continues from the output folder's state and the log cursor.
    `dsn` None: the CLI's database (resolved once, here)."""
    dsn = dsn or await asyncio.to_thread(default_database_url)
    total = ExportReport(Path(output_dir))
    while not stop.is_set():
        try:
            rep = await asyncio.to_thread(export_once, dsn, output_dir, lateness=lateness, **kw)
        except Exception as exc:  # the database away, another export holding the folder: next round
            log.warning("export round failed, retrying in %.0f s: %s: %s", poll, type(exc).__name__, exc)
            await sleep_or_stop(stop, poll)
            continue
        for name, t in rep.types.items():
            tt = total.types[name]
            tt.written += t.written
            tt.unchanged += t.unchanged
            tt.rows += t.rows
            tt.hours += t.hours
            tt.invalidated += t.invalidated
        total.seconds += rep.seconds
        if rep.files_written:
            for line in rep.summary_lines():
                log.info("%s", line)
        now = datetime.now(tz=UTC)
        next_close = floor_hour(now) + HOUR + timedelta(seconds=lateness)
        wait = min(poll, max(1.0, (next_close - now).total_seconds()))
        await sleep_or_stop(stop, wait)
    return total
