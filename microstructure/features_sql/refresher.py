"""The incremental refresher: materialise the feature stages for exactly the ranges writes touched.

Every write logs the time range it touched per (raw table, symbol) in `raw_invalidations`, in the
write's own transaction. `refresh_pending` consumes that log (consumer 'features'): it takes the
rows of every transaction that has ended (those below the snapshot's xmin, so a write still in
flight is never skipped: its rows are taken by a later call), merges their ranges, widens each to
the buckets of every stage it feeds, and re-materialises those buckets in dependency order.

- plain PostgreSQL / Apache-only TimescaleDB: per stage, DELETE the window's buckets and INSERT the
  stage's own SELECT run over the window (`WITH <source> AS (rows of the window) <stage SELECT>`: the
  same SELECT text a continuous aggregate has). A window goes in chunks of at most a day (less for a
  refresh of a few days, so that every connection has work to its end: chunk_size); each chunk
  (every stage of its group) is one transaction, so a killed refresh leaves no half-written range,
  and the cursor moves only after the last chunk: a rerun does the rest (refreshes are idempotent).
- TimescaleDB with continuous aggregates: `refresh_continuous_aggregate` over each window, stage
  by stage in dependency order (the policies keep the recent window fresh; this covers backfills,
  which a policy's window never reaches). `force` re-materialises even without invalidations (a
  changed large-trade threshold).

One refresher runs at a time (an advisory lock): `refresh_pending` waits for it, the live loop
skips a round when another refresher holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from microstructure.db.invalidation_log import advance_cursor, pending_ranges
from microstructure.features_sql.stages import LAYER_TABLE, RAW_TABLES, STAGE_BY_NAME, Stage, stages_for
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

CONSUMER = "features"
LOCK_KEY = "microstructure:features_refresh"
CHUNK = timedelta(days=1)
# smaller chunks for small refreshes (chunk_size); each a multiple of every stage's bucket, so that
# chunks end on bucket edges
CHUNKS = tuple(timedelta(hours=h) for h in (24, 12, 6, 3, 1))
LOGGED_TABLES = (*RAW_TABLES, LAYER_TABLE)  # what the refresher takes from the log
MIN_ALIGN_S = 60  # sub-minute stages are refreshed a whole minute at a time
PARALLEL_FROM = timedelta(hours=1)  # refreshes of more data than this use helper connections
DEFAULT_FEATURES_INTERVAL = 5.0  # seconds between live refreshes (collect all --features-interval)
BACKFILL_INTERVAL = 0.5  # seconds between refresh rounds beside a historical load (refreshing_alongside)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """Buckets [lo, hi) of the stages fed by `raw_table`, for `symbols` (None: every symbol)."""

    raw_table: str
    lo: datetime
    hi: datetime
    symbols: tuple[str, ...] | None


@dataclass
class RefreshReport:
    engine: str = ""
    windows: int = 0
    statements: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    stages: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # rows per stage
    skipped_busy: bool = False

    def summary_lines(self) -> list[str]:
        if self.skipped_busy and not self.windows:
            return ["features: another refresher was running; nothing done here"]
        how = "continuous aggregates" if self.engine == "continuous_aggregates" else "refresher"
        rows = f", {self.rows_written:,} stage rows" if self.engine != "continuous_aggregates" else ""
        return [f"features ({how}): {self.windows} windows refreshed{rows} in {self.seconds:.2f} s"]

    def add(self, other: RefreshReport) -> None:
        self.windows += other.windows
        self.statements += other.statements
        self.rows_written += other.rows_written
        self.seconds += other.seconds
        for k, v in other.stages.items():
            self.stages[k] += v


def align(t: datetime, seconds: int, *, up: bool = False) -> datetime:
    """`t` floored (or ceiled) to a multiple of `seconds` since the epoch (bars are epoch-aligned)."""
    us = (t - EPOCH) // timedelta(microseconds=1)
    step = seconds * 1_000_000
    q, r = divmod(us, step)
    if up and r:
        q += 1
    return EPOCH + timedelta(microseconds=q * step)


def merge(ranges: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Half-open ranges merged where they overlap or touch."""
    out: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def stage_window(stage: Stage, lo: datetime, hi: datetime) -> tuple[datetime, datetime]:
    """The stage's buckets that hold any time in [lo, hi) (widened to whole minutes at least)."""
    step = max(stage.seconds, MIN_ALIGN_S)
    return align(lo, step), align(hi, step, up=True)


def chunks(lo: datetime, hi: datetime, size: timedelta = CHUNK) -> list[tuple[datetime, datetime]]:
    """[lo, hi) cut at multiples of `size` since the epoch (so chunks of a day end at midnight UTC)."""
    out = []
    seconds = int(size.total_seconds())
    t = lo
    while t < hi:
        nxt = align(t, seconds) + size  # the next multiple after t
        out.append((t, min(nxt, hi)))
        t = nxt
    return out


def chunk_size(windows: Sequence[Window], connections: int) -> timedelta:
    """The chunk a refresh cuts its windows into: a day, or less (12, 6, 3 hours, at least an hour)
    until there are two chunks per connection when there are several, so that a refresh of a few
    days keeps every connection busy to its end (a backfill refreshing its last loaded day alone:
    quarter days on both connections, not the whole day on one core while the other waits)."""
    if connections < 2:
        return CHUNK
    for size in CHUNKS:
        if sum(len(chunks(w.lo, w.hi, size)) for w in windows) >= 2 * connections:
            return size
    return CHUNKS[-1]


# ---------------------------------------------------------------- engine


async def features_engine(conn: asyncpg.Connection) -> str:
    """'continuous_aggregates' or 'refresher', as the migration recorded it."""
    value = await conn.fetchval("SELECT value FROM microstructure_meta WHERE key = 'features'")
    if value is None:
        raise RuntimeError("the feature layer is not in this database: run `microstructure db upgrade`")
    return str(value)


def windows_from(ranges: Iterable[tuple[str, str, datetime, datetime]]) -> list[Window]:
    """Logged ranges -> windows per raw table, symbols with the same (minute-aligned) window together."""
    by_table: dict[tuple[str, datetime, datetime], list[str]] = defaultdict(list)
    per: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
    for table, symbol, lo, hi in ranges:
        span = (align(lo, MIN_ALIGN_S), align(hi, MIN_ALIGN_S, up=True))
        # a changed feature layer invalidates the span in every stage
        for t in RAW_TABLES if table == LAYER_TABLE else (table,) if table in RAW_TABLES else ():
            per[(t, symbol)].append(span)
    for (table, symbol), rs in per.items():
        for lo, hi in merge(rs):
            by_table[(table, lo, hi)].append(symbol)
    return [Window(t, lo, hi, tuple(sorted(syms))) for (t, lo, hi), syms in sorted(by_table.items())]


# ---------------------------------------------------------------- materialising


def _delete_sql(stage: Stage) -> str:
    return f"DELETE FROM {stage.name} WHERE symbol = ANY($1::text[]) AND bucket >= $2 AND bucket < $3"


def _insert_sql(stage: Stage) -> str:
    # The CTE has the source's own name, so the stage's SELECT reads only the window's rows
    # (inside its own definition a CTE's name still means the table).
    col = stage.time_column
    return (
        f"INSERT INTO {stage.name}\n"
        f"WITH {stage.source} AS (SELECT * FROM {stage.source} "
        f"WHERE symbol = ANY($1::text[]) AND {col} >= $2 AND {col} < $3)\n"
        f"{stage.select_sql()}"
    )


# Aggregation memory for a refresh statement: a day of per-second buckets holds ~86,000 groups of
# partial aggregates (~45 MB); the planner, which cannot tell how many buckets time_bucket() makes,
# would plan a hash aggregate spilling to disk in 256 batches (or a sort) within the default 4 MB.
# Hash tables only: sorts keep work_mem.
AGG_MEMORY_SQL = "SET LOCAL hash_mem_multiplier = 64"


async def _materialise_chunk(
    conn: asyncpg.Connection, stages: Sequence[Stage], symbols: Sequence[str], lo: datetime, hi: datetime,
    report: RefreshReport,
) -> None:  # fmt: skip
    marks: list[tuple[str, datetime]] = []
    async with conn.transaction():
        await conn.execute(AGG_MEMORY_SQL)
        for stage in stages:
            s_lo, s_hi = stage_window(stage, lo, hi)
            await conn.execute(_delete_sql(stage), list(symbols), s_lo, s_hi)
            status = await conn.execute(_insert_sql(stage), list(symbols), s_lo, s_hi)
            n = int(status.split()[-1])
            report.rows_written += n
            report.stages[stage.name] += n
            report.statements += 2
            marks.append((stage.name, s_hi))
        # one statement, rows in name order, at the end: chunks of one group on other connections
        # wait here for this one's commit (never for its whole run), and never deadlock
        marks.sort()
        await conn.execute(
            "INSERT INTO feature_watermarks (stage, refreshed_to) SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
            "ON CONFLICT (stage) DO UPDATE SET refreshed_to = greatest(feature_watermarks.refreshed_to, "
            "excluded.refreshed_to), refreshed_at = now()",
            [m[0] for m in marks],
            [m[1] for m in marks],
        )


async def _refresh_caggs(
    conn: asyncpg.Connection, stages: Sequence[Stage], lo: datetime, hi: datetime, force: bool,
    report: RefreshReport,
) -> None:  # fmt: skip
    for stage in stages:
        s_lo, s_hi = stage_window(stage, lo, hi)
        if force:
            await conn.execute(
                "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz, force => true)",
                stage.name, s_lo, s_hi,
            )  # fmt: skip
        else:
            await conn.execute(
                "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
                stage.name, s_lo, s_hi,
            )  # fmt: skip
        report.statements += 1
        report.stages[stage.name] += 0


@dataclass(frozen=True)
class Job:
    """One chunk (at most a day) of one group's stages: one transaction."""

    stages: list[Stage]
    symbols: list[str]
    lo: datetime
    hi: datetime

    def span(self) -> tuple[datetime, datetime]:
        """The times whose buckets this job rewrites: [lo, hi) widened to its coarsest stage's buckets
        (a window's unaligned end reaches into the bucket it shares with the next window's chunk)."""
        return stage_window(max(self.stages, key=lambda s: s.seconds), self.lo, self.hi)

    def overlaps(self, other: Job) -> bool:
        """Both would rewrite some of the same buckets (same stages, overlapping widened times)."""
        if self.stages[0].group != other.stages[0].group:
            return False
        (a_lo, a_hi), (b_lo, b_hi) = self.span(), other.span()
        return a_lo < b_hi and b_lo < a_hi


async def run_jobs(
    jobs: Sequence[Job], conns: Sequence[asyncpg.Connection],
    do: Callable[[asyncpg.Connection, Job], Awaitable[None]],
) -> None:  # fmt: skip
    """Run the jobs on the connections side by side, in order, never two that overlap at once (a
    window given twice, e.g. the log's and a forced range, would rewrite the same buckets)."""
    queue = list(jobs)
    running: list[Job] = []
    changed = asyncio.Condition()

    async def worker(c: asyncpg.Connection) -> None:
        while True:
            async with changed:
                while True:
                    if not queue:
                        return
                    job = next((j for j in queue if not any(j.overlaps(r) for r in running)), None)
                    if job is not None:
                        break
                    await changed.wait()
                queue.remove(job)
                running.append(job)
            try:
                await do(c, job)
            finally:
                async with changed:
                    running.remove(job)
                    changed.notify_all()

    await asyncio.gather(*(worker(c) for c in conns))


async def refresh_windows(
    conn: asyncpg.Connection,
    windows: Sequence[Window],
    *,
    force: bool = False,
    engine: str | None = None,
    helpers: Sequence[asyncpg.Connection] = (),
) -> RefreshReport:
    """Materialise the stages fed by each window's raw table over the window, in dependency order.

    Plain PostgreSQL: each group of stages (trades, book, ...) of a window is an independent chain,
    and each chunk (a day at most) of a chain is independent of the others; with `helpers` (more
    connections) the chunks of every chain run side by side, each in its own transaction."""
    report = RefreshReport(engine=engine or await features_engine(conn))
    started = time.perf_counter()
    if report.engine == "continuous_aggregates":
        # A continuous aggregate is refreshed for every symbol at once: merge the windows over
        # symbols, then refresh each stage (finer first, so that coarser stages read fresh rows).
        per_stage: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for w in windows:
            for stage in stages_for({w.raw_table}):
                per_stage[stage.name].append((w.lo, w.hi))
        await conn.execute(AGG_MEMORY_SQL.replace("LOCAL ", ""))  # a CALL runs outside a transaction
        try:
            for name in (s.name for s in stages_for(None)):
                for lo, hi in merge(per_stage.get(name, [])):
                    for c_lo, c_hi in chunks(lo, hi, timedelta(days=7)):
                        await _refresh_caggs(conn, [STAGE_BY_NAME[name]], c_lo, c_hi, force, report)
                        report.windows += 1
        finally:
            await conn.execute("RESET hash_mem_multiplier")
    else:
        jobs: list[Job] = []
        size = chunk_size(windows, 1 + len(helpers))
        for w in windows:
            symbols = list(w.symbols) if w.symbols is not None else await symbols_of(conn, w.raw_table)
            if not symbols:
                continue
            parts = chunks(w.lo, w.hi, size)
            report.windows += len(parts)
            groups: dict[str, list[Stage]] = defaultdict(list)
            for stage in stages_for({w.raw_table}):
                groups[stage.group].append(stage)
            jobs += [Job(stages, symbols, c_lo, c_hi) for stages in groups.values() for c_lo, c_hi in parts]

        async def do(c: asyncpg.Connection, j: Job) -> None:
            await _materialise_chunk(c, j.stages, j.symbols, j.lo, j.hi, report)

        await run_jobs(jobs, [conn, *helpers], do)
    report.seconds = time.perf_counter() - started
    return report


async def symbols_of(conn: asyncpg.Connection, table: str) -> list[str]:
    """The symbols a raw table holds (a loose index scan over its key, which leads with symbol)."""
    rows = await conn.fetch(
        f"WITH RECURSIVE s AS (SELECT min(symbol) AS symbol FROM {table} "
        f"UNION ALL SELECT (SELECT min(symbol) FROM {table} WHERE symbol > s.symbol) FROM s "
        f"WHERE s.symbol IS NOT NULL) SELECT symbol FROM s WHERE symbol IS NOT NULL"
    )
    return [r["symbol"] for r in rows]


async def time_range(
    conn: asyncpg.Connection, table: str, symbols: Sequence[str] | None
) -> tuple[datetime, datetime] | None:
    """[first, last] time of a raw table's rows (for the given symbols)."""
    syms = list(symbols) if symbols is not None else await symbols_of(conn, table)
    lo = hi = None
    for s in syms:
        row = await conn.fetchrow(f"SELECT min(ts) AS lo, max(ts) AS hi FROM {table} WHERE symbol = $1", s)
        if row is None or row["lo"] is None:
            continue
        lo = row["lo"] if lo is None else min(lo, row["lo"])
        hi = row["hi"] if hi is None else max(hi, row["hi"])
    return (lo, hi) if lo is not None and hi is not None else None


@contextlib.asynccontextmanager
async def refresh_lock(conn: asyncpg.Connection, *, wait: bool = True):  # type: ignore[no-untyped-def]
    """Hold the refresher's advisory lock; yields False (without it) when `wait` is off and it is taken."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", LOCK_KEY)
        got = True
    else:
        got = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LOCK_KEY))
    try:
        yield got
    finally:
        if got:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY)


def default_parallel() -> int:
    """Connections a big refresh uses (MICROSTRUCTURE_REFRESH_PARALLEL, default: up to 2 per the CPUs)."""
    raw = os.environ.get("MICROSTRUCTURE_REFRESH_PARALLEL")
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            from microstructure.config import SettingError

            raise SettingError(f"MICROSTRUCTURE_REFRESH_PARALLEL: expected an integer, got {raw!r}") from None
    return max(1, min(2, os.cpu_count() or 1))


@contextlib.asynccontextmanager
async def helper_connections(dsn: str | None, windows: Sequence[Window], parallel: int):  # type: ignore[no-untyped-def]
    """More connections for a refresh worth spreading (over an hour of data), else none."""
    span = sum(((w.hi - w.lo) for w in windows), timedelta())
    if dsn is None or parallel <= 1 or span <= PARALLEL_FROM:
        yield []
        return
    helpers = [await asyncpg.connect(dsn, timeout=10) for _ in range(parallel - 1)]
    try:
        yield helpers
    finally:
        for h in helpers:
            await h.close()


async def refresh_pending(
    conn: asyncpg.Connection, *, wait: bool = True, dsn: str | None = None, parallel: int | None = None
) -> RefreshReport:
    """Consume the invalidation log: re-materialise every range written since the last call."""
    async with refresh_lock(conn, wait=wait) as got:
        if not got:
            return RefreshReport(skipped_busy=True)
        _, horizon, ranges = await pending_ranges(conn, CONSUMER, LOGGED_TABLES)
        windows = windows_from(ranges)
        async with helper_connections(dsn, windows, parallel or default_parallel()) as helpers:
            report = await refresh_windows(conn, windows, helpers=helpers)
        await advance_cursor(conn, CONSUMER, horizon)
        return report


async def refresh_range(
    conn: asyncpg.Connection,
    *,
    symbols: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    force: bool = True,
    dsn: str | None = None,
    parallel: int | None = None,
) -> RefreshReport:
    """Re-materialise [start, end) (default: all the data) for `symbols` (default: all), whatever the
    log says: after a change of symbol_settings, or to rebuild a history. Consumes the log too."""
    async with refresh_lock(conn):
        _, horizon, ranges = await pending_ranges(conn, CONSUMER, LOGGED_TABLES)
        windows = windows_from(ranges)
        for table in RAW_TABLES:
            span = await time_range(conn, table, symbols)
            if span is None:
                continue
            lo = max(span[0], start) if start else span[0]
            hi = min(span[1] + timedelta(microseconds=1), end) if end else span[1] + timedelta(microseconds=1)
            if lo >= hi:
                continue
            windows.append(
                Window(
                    table,
                    align(lo, MIN_ALIGN_S),
                    align(hi, MIN_ALIGN_S, up=True),
                    tuple(symbols) if symbols is not None else None,
                )
            )
        async with helper_connections(dsn, windows, parallel or default_parallel()) as helpers:
            report = await refresh_windows(conn, windows, force=force, helpers=helpers)
        await advance_cursor(conn, CONSUMER, horizon)
        return report


async def refresh_once(dsn: str | None = None) -> RefreshReport:
    """Connect, consume the whole log (waiting for a running refresher), disconnect. `dsn` None: the
    database the CLI uses (db.connect.default_database_url)."""
    if dsn is None:
        from microstructure.db.connect import default_database_url

        dsn = await asyncio.to_thread(default_database_url)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await refresh_pending(conn, wait=True, dsn=dsn)
    finally:
        await conn.close()


async def run_refresher(
    dsn: str,
    stop: asyncio.Event,
    interval: float,
    *,
    on_round: Callable[[RefreshReport], None] | None = None,
    final: bool = True,
) -> RefreshReport:
    """Refresh every `interval` seconds until `stop` (the live path on plain PostgreSQL; on TimescaleDB
    it covers what the policies' window does not reach). A database that does not answer is retried
    on the next round; the rounds' totals are returned. `final`: one more round after `stop`, waiting
    for a running refresher, for what the last interval wrote (its failure not raised)."""
    total = RefreshReport()
    conn: asyncpg.Connection | None = None
    while True:
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(dsn, timeout=10)
                total.engine = await features_engine(conn)
            rep = await refresh_pending(conn, wait=False, dsn=dsn)
            total.add(rep)
            if on_round is not None:
                on_round(rep)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("feature refresh failed, retrying next round: %s", exc)
            if conn is not None:
                conn.terminate()
                conn = None
        if await sleep_or_stop(stop, interval):
            break
    if conn is not None:
        with contextlib.suppress(Exception):
            if final:
                total.add(await refresh_pending(conn, wait=True, dsn=dsn))  # what the last interval wrote
            await conn.close()
    return total


@dataclass
class Alongside:
    """What `refreshing_alongside` did: the rounds' totals, and why the last round failed (None: it
    did not)."""

    report: RefreshReport = field(default_factory=RefreshReport)
    error: BaseException | None = None


@contextlib.asynccontextmanager
async def refreshing_alongside(dsn: str, interval: float = BACKFILL_INTERVAL) -> AsyncIterator[Alongside]:
    """Materialise what the block writes while it runs: a refresh round every `interval` seconds (a
    round finds nothing to do until a load commits, then refreshes what it committed), so that a
    backfill's loaded days are refreshed while the next ones load, not all after the last; after the
    block, a last round (waiting for another refresher) for what is left. Its failure is kept in
    `error`, not raised: what the block stored is kept, a later refresh picks it up. An error or a
    cancel of the block stops the rounds (what they committed stays) without the last one."""
    done = Alongside()
    stop = asyncio.Event()
    rounds = asyncio.create_task(run_refresher(dsn, stop, interval, final=False), name="features-alongside")
    try:
        yield done
    except BaseException:
        rounds.cancel()
        with contextlib.suppress(BaseException):
            await rounds
        raise
    stop.set()
    done.report.add(await rounds)
    try:
        last = await refresh_once(dsn)
    except Exception as exc:
        log.error("feature refresh after the load failed: %s: %s", type(exc).__name__, exc)
        done.error = exc
    else:
        done.report.add(last)
        done.report.engine = last.engine
