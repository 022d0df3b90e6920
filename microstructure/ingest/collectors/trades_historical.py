"""Historical aggregate trades: bulk archives for past days, REST `fromId` pagination for the rest.

For each symbol and each UTC day of [start, end] (the server's clock decides what "today" is):

- days already complete in the database are skipped. A day is complete when its agg_trade_coverage
  row has row_count == last_id - first_id + 1 and its ids join the neighbouring days (the previous
  day's last id + 1 == its first id; the next day's first id == its last id + 1). When the next day
  is not stored, the collector's checkpoint (written after each day it finished) or one REST probe
  (`fromId = last_id + 1`: the next trade must belong to a later day) decides;
- a whole past month whose days are all needed comes from the monthly archive (one download instead
  of ~30) when it is not larger than `monthly_max_bytes`, else from the daily archives;
- past days come from the daily archives, verified against their .CHECKSUM; downloading (and parsing)
  the next archives overlaps loading the current one (bounded prefetch), and they download one at a
  time and parse in the order asked for (archives.ParseTurns), so the oldest is ready first;
- a day with no partition yet takes the bulk path (sink/bulk.py): its COPY runs while the day
  before builds its indexes and attaches; that day's checkpoint follows its attach, and anything
  else (REST, a skipped day, a failed archive) waits for both;
- days without an archive (today; yesterday before publication; anything answering 404) are filled
  from REST with `fromId` pagination, starting after the last stored id (up to now for today);
- a checksum mismatch refuses that day (error in the report, an `ingest_events` row) and the run
  continues with the other days; so does an archive with no valid row or more than
  archives.MAX_MALFORMED_SHARE of its rows malformed (a spot file at a USD-M path, ...): nothing of
  it is written, so the day is not covered (a monthly archive falls back to the daily ones);
  missing archives are recorded in `ingest_events` too.

Everything else goes through the writer (idempotent: a run killed at any point and started again stores no
row twice and ends with the same rows). At the end everything is flushed and a report gives rows per
symbol, days from archives and from REST, and the gaps left.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.config import Settings
from microstructure.ingest.binance import archives
from microstructure.ingest.binance.rest import (
    AGG_TRADES_MAX_LIMIT,
    HOUR_MS,
    BinanceRest,
    IpBanned,
    RestError,
    RestStats,
    RetryNote,
    Unreachable,
)
from microstructure.ingest.collectors.progress import DayProgress
from microstructure.ingest.sink import bulk

log = logging.getLogger(__name__)

COLLECTOR = "aggtrades_historical"
# What a REST call of a day can end in after the client's retries (the day fails; others go on).
# IpBanned is not among them: a ban stops the run (exit code 3).
REST_FAILURES: tuple[type[BaseException], ...] = (
    RestError,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)
MAX_RETRY_EVENTS = 200  # rest_retry rows a run writes to ingest_events (the summary counts them all)
KIND = "agg_trades"
DAY_MS = 86_400_000


class HistoricalError(RuntimeError):
    """A historical run cannot start (bad range, unknown symbols)."""


class UnknownSymbols(HistoricalError):
    def __init__(self, unknown: Sequence[str], where: str) -> None:
        self.symbols = list(unknown)
        super().__init__(
            f"unknown symbol{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
            f"(not listed by exchangeInfo at {where}); nothing was downloaded"
        )


# ---------------------------------------------------------------- report


@dataclass
class Gap:
    from_id: int
    to_id: int
    note: str = ""

    @property
    def missing(self) -> int:
        return self.to_id - self.from_id + 1


@dataclass
class SymbolReport:
    symbol: str
    days: int = 0
    rows: int = 0  # rows handed to the writer in this run
    rows_archive: int = 0
    rows_rest: int = 0
    rows_bulk: int = 0  # of rows_archive: loaded by the bulk path (a fresh day partition)
    days_skipped: list[date] = field(default_factory=list)  # already complete
    days_archive: list[date] = field(default_factory=list)
    months_archive: list[str] = field(default_factory=list)
    days_rest: list[date] = field(default_factory=list)
    days_refused: list[date] = field(default_factory=list)  # checksum mismatch, or a failed archive
    days_failed: list[date] = field(default_factory=list)  # REST (or the network) kept failing
    archives_missing: list[str] = field(default_factory=list)
    malformed_rows: int = 0
    malformed_by_period: dict[str, int] = field(default_factory=dict)  # day or month -> malformed rows
    format_notes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # note -> archives
    duplicate_rows: int = 0
    rest_pages: int = 0
    stored_rows: int = 0  # rows stored for the range at the end (from agg_trade_coverage)
    first_id: int | None = None
    last_id: int | None = None
    days_without_rows: list[date] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def missing_ids(self) -> int:
        return sum(g.missing for g in self.gaps)


@dataclass
class HistoricalReport:
    start_day: date
    end_day: date
    today: date
    symbols: dict[str, SymbolReport]
    elapsed_s: float = 0.0
    rest: RestStats = field(default_factory=RestStats)
    rest_retries: list[RetryNote] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.symbols.values())

    @property
    def errors(self) -> list[str]:
        return [e for s in self.symbols.values() for e in s.errors]

    @property
    def gaps(self) -> int:
        return sum(len(s.gaps) for s in self.symbols.values())

    @property
    def ok(self) -> bool:
        return not self.errors and not self.gaps

    def problems(self) -> list[str]:
        """Why the run did not do its job: refused or failed days, gaps left."""
        out = list(self.errors)
        for s in self.symbols.values():
            if s.gaps:
                out.append(f"{s.symbol}: {len(s.gaps)} gaps left ({s.missing_ids:,} ids)")
        return out

    def summary_lines(self) -> list[str]:
        lines = [
            f"aggTrades {self.start_day} .. {self.end_day} (today {self.today}): {self.rows:,} rows written "
            f"in {self.elapsed_s:.1f} s; REST {self.rest.requests} requests, weight {self.rest.weight_used}, "
            f"{self.rest.rate_limited} x 429, {self.rest.retries} retries"
        ]
        if self.rest_retries:
            kinds: dict[str, int] = defaultdict(int)
            for n in self.rest_retries:
                kinds[n.reason.split(":", 1)[0].split(" in the answer")[0]] += 1
            lines.append(
                "REST answers retried: "
                + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
                + " (ingest_events rest_retry)"
            )
        for s in self.symbols.values():
            refused = {d.isoformat() for d in s.days_refused}
            lines.append(
                f"{s.symbol}: {s.rows:,} rows ({s.rows_archive:,} archive, {s.rows_bulk:,} of them bulk-loaded, "
                f"{s.rows_rest:,} REST); days: "
                f"{len(s.days_archive)} archive{f' ({len(s.months_archive)} monthly)' if s.months_archive else ''}, "
                f"{len(s.days_rest)} REST, {len(s.days_skipped)} already complete, {len(s.days_refused)} refused"
                f"{f', {len(s.days_failed)} failed' if s.days_failed else ''}; "
                f"stored {s.stored_rows:,} rows, ids {s.first_id}..{s.last_id}; "
                f"gaps left {len(s.gaps)} ({s.missing_ids:,} ids)"
            )
            if s.malformed_by_period:
                lines.append(
                    f"  malformed rows skipped: {s.malformed_rows:,} ("
                    + ", ".join(
                        f"{p}: {n:,}{' FAILED' if p in refused else ''}"
                        for p, n in s.malformed_by_period.items()
                    )
                    + ")"
                )
            lines.extend(f"  note: {note} ({n} archives)" for note, n in s.format_notes.items())
            for g in s.gaps[:10]:
                lines.append(f"  gap {g.from_id}..{g.to_id} ({g.missing:,} ids) {g.note}".rstrip())
            if len(s.gaps) > 10:
                lines.append(f"  ... and {len(s.gaps) - 10} more gaps")
            lines.extend(f"  error: {e}" for e in s.errors)
        return lines


# ---------------------------------------------------------------- dates


def day_start_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def ms_day(t: int) -> date:
    return datetime.fromtimestamp(t / 1000, tz=UTC).date()


def day_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def month_days(year: int, month: int) -> list[date]:
    return [date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]


# ---------------------------------------------------------------- database bookkeeping


@dataclass(frozen=True)
class Coverage:
    day: date
    first_id: int
    last_id: int
    row_count: int
    missing_count: int

    @property
    def dense(self) -> bool:
        return self.missing_count == 0 and self.row_count == self.last_id - self.first_id + 1


async def load_coverage(conn: asyncpg.Connection, symbol: str, d0: date, d1: date) -> dict[date, Coverage]:
    rows = await conn.fetch(
        "SELECT day, first_id, last_id, row_count, missing_count FROM agg_trade_coverage "
        "WHERE symbol = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
        symbol,
        d0,
        d1,
    )
    return {
        r["day"]: Coverage(r["day"], r["first_id"], r["last_id"], r["row_count"], r["missing_count"])
        for r in rows
    }


async def load_checkpoint(conn: asyncpg.Connection, symbol: str) -> tuple[int | None, dict[str, Any]]:
    row = await conn.fetchrow(
        "SELECT last_id, detail FROM ingest_checkpoints WHERE collector = $1 AND symbol = $2",
        COLLECTOR,
        symbol,
    )
    if row is None:
        return None, {}
    detail = row["detail"]
    if isinstance(detail, str):
        detail = json.loads(detail)
    return row["last_id"], dict(detail or {})


async def save_checkpoint(
    conn: asyncpg.Connection, symbol: str, last_id: int, last_ts_ms: int | None, detail: dict[str, Any]
) -> None:
    ts = datetime.fromtimestamp(last_ts_ms / 1000, tz=UTC) if last_ts_ms is not None else None
    await conn.execute(
        "INSERT INTO ingest_checkpoints (collector, symbol, last_id, last_ts, detail, updated_at) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, now()) "
        "ON CONFLICT (collector, symbol) DO UPDATE SET last_id = EXCLUDED.last_id, "
        "last_ts = EXCLUDED.last_ts, detail = EXCLUDED.detail, updated_at = now()",
        COLLECTOR,
        symbol,
        last_id,
        ts,
        json.dumps(detail),
    )


async def record_event(
    conn: asyncpg.Connection, symbol: str | None, kind: str, detail: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO ingest_events (collector, symbol, kind, detail) VALUES ($1, $2, $3, $4::jsonb)",
        COLLECTOR,
        symbol,
        kind,
        json.dumps(detail, default=str),
    )


async def record_retries(pool: Any, notes: Sequence[RetryNote], collector: str = COLLECTOR) -> None:
    """The run's retried REST requests as ingest_events `rest_retry` rows (the first MAX_RETRY_EVENTS;
    a last row counts the others)."""
    rows = [(collector, None, "rest_retry", json.dumps(n.as_detail())) for n in notes[:MAX_RETRY_EVENTS]]
    if len(notes) > MAX_RETRY_EVENTS:
        rows.append(
            (collector, None, "rest_retry", json.dumps({"not_recorded": len(notes) - MAX_RETRY_EVENTS}))
        )
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO ingest_events (collector, symbol, kind, detail) VALUES ($1, $2, $3, $4::jsonb)", rows
        )


async def gaps_in_day(conn: asyncpg.Connection, symbol: str, d: date) -> list[Gap]:
    t0 = datetime(d.year, d.month, d.day, tzinfo=UTC)
    rows = await conn.fetch(
        "SELECT agg_id + 1 AS from_id, nxt - 1 AS to_id FROM ("
        "  SELECT agg_id, lead(agg_id) OVER (ORDER BY agg_id) AS nxt FROM agg_trades"
        "  WHERE symbol = $1 AND ts >= $2 AND ts < $3) s "
        "WHERE nxt > agg_id + 1 ORDER BY 1",
        symbol,
        t0,
        t0 + timedelta(days=1),
    )
    return [Gap(r["from_id"], r["to_id"], f"inside {d}") for r in rows]


async def final_state(
    conn: asyncpg.Connection, symbol: str, start: date, end: date, report: SymbolReport
) -> None:
    """Stored rows, id span, days without rows and gaps of [start, end] from coverage (exact ranges)."""
    cov = await load_coverage(conn, symbol, start, end)
    report.stored_rows = sum(c.row_count for c in cov.values())
    report.first_id = min((c.first_id for c in cov.values()), default=None)
    report.last_id = max((c.last_id for c in cov.values()), default=None)
    report.days_without_rows = [d for d in day_range(start, end) if d not in cov]
    gaps: list[Gap] = []
    prev: Coverage | None = None
    for d in sorted(cov):
        c = cov[d]
        if prev is not None and c.first_id > prev.last_id + 1:
            gaps.append(Gap(prev.last_id + 1, c.first_id - 1, f"between {prev.day} and {d}"))
        if not c.dense:
            gaps.extend(await gaps_in_day(conn, symbol, d))
        prev = c
    report.gaps = gaps


# ---------------------------------------------------------------- one symbol


@dataclass
class _Unit:
    kind: str  # month | day | rest | check (stored complete, if it joins the day loaded before it)
    days: list[date]
    month: str = ""
    task: asyncio.Task[Any] | None = None


class _SymbolRun:
    def __init__(self, ctx: _Run, symbol: str) -> None:
        self.ctx = ctx
        self.symbol = symbol
        self.report = SymbolReport(symbol)
        self.last_id: int | None = None  # last id of the day before the one being processed, if known
        self.cov: dict[date, Coverage] = {}
        self.ckpt_detail: dict[str, Any] = {}
        self._requeue: list[_Unit] = []  # a monthly archive that failed: its days, to load one by one
        # what is left of the days loaded last by the bulk path: their index builds and attach, then
        # the unit's checkpoint. It runs while the next archive is copied in (_store_archive); all
        # else waits for it first (_settle): a checkpoint never runs ahead of the rows it covers.
        self._tail: asyncio.Task[None] | None = None
        self._load: bulk.DayLoad | None = None  # the last bulk day begun
        self._fail_reason = ""

    # ---- planning
    async def _ends_at_day_end(self, d: date) -> bool:
        """The stored last id of `d` is the day's last trade."""
        c = self.cov.get(d)
        if c is None or d >= self.ctx.today:
            return False
        nxt = self.cov.get(d + timedelta(days=1))
        if nxt is not None and nxt.first_id == c.last_id + 1:
            return True
        if (
            self.ckpt_detail.get("complete_day") == d.isoformat()
            and self.ckpt_detail.get("complete_last_id") == c.last_id
        ):
            return True
        # Ask the exchange: the trade after the day's last stored id must belong to a later day.
        page = await self._probe(from_id=c.last_id + 1)
        return (
            bool(page)
            and page[0].agg_id == c.last_id + 1
            and page[0].ts_ms >= day_start_ms(d + timedelta(days=1))
        )

    async def _probe(self, **kw: Any) -> list[Any]:
        """One aggTrades probe of the planning (limit 1). A probe that fails after the client's
        retries answers "unknown" ([]): the day is loaded again (idempotent) rather than trusted."""
        if self.ctx.unreachable is not None:
            return []
        try:
            return await self.ctx.rest.agg_trade_refs(self.symbol, limit=1, **kw)
        except IpBanned:
            raise
        except REST_FAILURES as exc:
            self.ctx.note_failure(exc)
            log.warning("%s: REST probe failed (%s); the day is loaded again", self.symbol, exc)
            return []

    async def _starts_at_day_start(self, d: date) -> bool:
        """The stored first id of `d` is the day's first trade (its predecessor is in an earlier day)."""
        c = self.cov[d]
        prev = self.cov.get(d - timedelta(days=1))
        if prev is not None and prev.last_id + 1 == c.first_id:
            return True
        page = await self._probe(from_id=max(c.first_id - 1, 0))
        if not page:
            return False
        a, t = page[0].agg_id, page[0].ts_ms
        # the predecessor traded before the day, or there is none (the symbol's first trade)
        return (a == c.first_id - 1 and t < day_start_ms(d)) or a == c.first_id

    async def plan(self) -> deque[_Unit]:
        """Days to load as units; a stored day is complete when dense and starting/ending at the day's edges."""
        ctx = self.ctx
        async with ctx.pool.acquire() as conn:
            self.cov = await load_coverage(
                conn, self.symbol, ctx.start - timedelta(days=1), ctx.end + timedelta(days=1)
            )
            _, self.ckpt_detail = await load_checkpoint(conn, self.symbol)
        days = day_range(ctx.start, ctx.end)
        self.report.days = len(days)
        todo: list[date] = []
        check: set[date] = set()
        for d in days:
            c = self.cov.get(d)
            if c is None or not c.dense or d >= ctx.today or not await self._ends_at_day_end(d):
                todo.append(d)
                continue
            prev = self.cov.get(d - timedelta(days=1))
            if prev is not None and prev.last_id + 1 == c.first_id:
                self.report.days_skipped.append(d)
            elif todo and todo[-1] == d - timedelta(days=1):
                # Whether it starts at the day's first trade shows once the day before is loaded.
                check.add(d)
                todo.append(d)
            elif await self._starts_at_day_start(d):
                self.report.days_skipped.append(d)
            else:
                todo.append(d)
        # The id just before the first day to load, when the stored day before it is known to end there.
        if todo:
            before = todo[0] - timedelta(days=1)
            if before in self.cov and (
                before in self.report.days_skipped or await self._ends_at_day_end(before)
            ):
                self.last_id = self.cov[before].last_id
        units: deque[_Unit] = deque()
        todo_set = set(todo)
        i = 0
        while i < len(todo):
            d = todo[i]
            if d >= ctx.today:
                units.append(_Unit("rest", [d]))
                i += 1
                continue
            if d in check:
                units.append(_Unit("check", [d]))
                i += 1
                continue
            mdays = month_days(d.year, d.month)
            if (
                ctx.use_monthly
                and d.day == 1
                and mdays[-1] < ctx.today
                and mdays[-1] <= ctx.end
                and all(x in todo_set and x not in check for x in mdays)
            ):
                units.append(_Unit("month", mdays, month=d.strftime("%Y-%m")))
                i += len(mdays)
                continue
            units.append(_Unit("day", [d]))
            i += 1
        return units

    # ---- archives
    async def _fetch(
        self, unit: _Unit, turn: archives.ParseTurn, download: archives.ParseTurn
    ) -> archives.AggTradesArchive:
        ctx = self.ctx
        if unit.kind == "month":
            url = archives.archive_url(ctx.archive_url, "aggTrades", self.symbol, "monthly", unit.month)
            size = await archives.archive_size(ctx.session, url)
            if size is not None and size > ctx.monthly_max_bytes:
                raise _TooLarge(f"{url}: {size:,} bytes > {ctx.monthly_max_bytes:,}")
            when: date | str = unit.month
            period = "monthly"
        else:
            when, period = unit.days[0], "daily"
        return await archives.load_aggtrades_archive(
            ctx.session,
            ctx.archive_url,
            self.symbol,
            period,
            when,
            cache_dir=ctx.cache_dir,
            tmp_dir=ctx.tmp_dir,
            parse_turn=turn,
            download_turn=download,
        )

    def _prefetch(self, queue: deque[_Unit], current: _Unit) -> None:
        ahead = [current, *list(queue)[: self.ctx.prefetch]]
        for u in ahead:
            if u.kind in ("day", "month") and u.task is None:
                turn = self.ctx.parse_turns.turn()  # its place in the line now, in the queue's order
                download = self.ctx.download_turns.turn()
                u.task = asyncio.create_task(self._fetch(u, turn, download))
                for t in (turn, download):  # even if it never ran
                    u.task.add_done_callback(lambda _, t=t: t.give_up())

    async def _submit(self, table: pa.Table, source: str) -> None:
        ctx = self.ctx
        n = table.num_rows
        for off in range(0, n, ctx.batch_rows):
            chunk = table.slice(off, ctx.batch_rows)
            await ctx.writer.submit(KIND, self.symbol, chunk)
            self.report.rows += chunk.num_rows
            if source == "archive":
                self.report.rows_archive += chunk.num_rows
            else:
                self.report.rows_rest += chunk.num_rows
            ctx.progress.update(self.symbol, rows=self.report.rows)

    async def _undo_tail(self) -> None:
        """On an error or a cancel: stop what the last bulk day left and drop its unattached table
        (the day stays unloaded, a re-run loads it), so that no lock or connection stays taken."""
        tail, self._tail = self._tail, None
        if tail is not None:
            tail.cancel()
            with contextlib.suppress(BaseException):
                await tail
        load, self._load = self._load, None
        if load is not None and not load.done:  # cancelled before it began
            await load.abandon()

    async def _settle(self) -> None:
        """Wait for what the last bulk-loaded days left to do (see `_tail`); its error raised here
        (the tail then stays for `_undo_tail`, as on a cancel, which reaches the tail too)."""
        if self._tail is not None:
            await self._tail
            self._tail = None

    def _then(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` after what `_tail` holds, in the background: the new tail."""
        before = self._tail

        async def chained() -> None:
            if before is not None:
                await before
            await step()

        self._tail = asyncio.create_task(chained())

    async def _store_archive(self, table: pa.Table) -> None:
        """An archive's rows, a UTC day at a time: by the bulk path where the day has no partition yet
        (sink/bulk.py), else through the writer's idempotent merge. A bulk day's COPY runs here, once
        the day before it has been copied too; its index builds and attach are left to `_tail`, so
        the next day's COPY (one core) runs beside them (two) instead of after them."""
        if not self.ctx.bulk_load or table.num_rows == 0:
            await self._settle()
            await self._submit(table, "archive")
            return
        await self.ctx.writer.flush()  # what went before is stored first: the gap scan sees it
        days = np.asarray(table.column("ts_ms").to_numpy(), dtype=np.int64) // DAY_MS
        cuts = np.flatnonzero(np.diff(days)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(days)], strict=True):
            part = table.slice(lo, hi - lo)
            d = ms_day(int(days[lo]) * DAY_MS)
            try:
                load = await bulk.begin_day(self.ctx.pool, self.symbol, d, part)
            except bulk.FALLBACK_ERRORS as exc:
                self._bulk_failed(d, exc)
                load = None
            try:
                await self._settle()  # the day before: attached, checkpointed
            except BaseException:
                if load is not None:
                    await load.abandon()
                raise
            if load is None:
                await self._submit(part, "archive")
                await self.ctx.writer.flush()
                continue
            self._load = load
            self._then(functools.partial(self._finish_bulk_day, load, part))

    def _bulk_failed(self, d: date, exc: BaseException) -> None:
        # the writer retries, spills and rejects with a log line as for any batch
        log.warning("%s %s: bulk load failed (%s); through the writer instead", self.symbol, d, exc)

    async def _finish_bulk_day(self, load: bulk.DayLoad, part: pa.Table) -> None:
        try:
            stored = await load.finish()
        except bulk.FALLBACK_ERRORS as exc:
            self._bulk_failed(load.day, exc)
            await self._submit(part, "archive")
            await self.ctx.writer.flush()
            return
        self.report.rows += stored
        self.report.rows_archive += stored
        self.report.rows_bulk += stored
        self.ctx.progress.update(self.symbol, rows=self.report.rows)

    async def _finish_unit(
        self, last_day: date, last_id: int | None, last_ts: int | None, complete: bool
    ) -> None:
        """Flush the writer, then checkpoint: the unit's rows are stored before the checkpoint says so."""
        await self.ctx.writer.flush()
        if last_id is None:
            return
        detail = dict(self.ckpt_detail)
        if complete:
            detail.update(complete_day=last_day.isoformat(), complete_last_id=last_id)
        self.ckpt_detail = detail
        async with self.ctx.pool.acquire() as conn:
            await save_checkpoint(conn, self.symbol, last_id, last_ts, detail)

    async def _event(self, kind: str, detail: dict[str, Any]) -> None:
        async with self.ctx.pool.acquire() as conn:
            await record_event(conn, self.symbol, kind, detail)

    async def _load_archive(self, unit: _Unit, arc: archives.AggTradesArchive) -> None:
        rep = self.report
        what = unit.month or unit.days[0].isoformat()
        rep.malformed_rows += arc.malformed
        rep.duplicate_rows += arc.duplicates
        for note in arc.notes:
            rep.format_notes[note] += 1
        if arc.malformed:
            rep.malformed_by_period[what] = arc.malformed
            await self._event(
                "malformed",
                {
                    "url": arc.url,
                    "rows": arc.malformed,
                    "sample": [
                        {"row": row, "reason": why}
                        for row, why in zip(arc.malformed_rows[:20], arc.malformed_reasons[:20], strict=True)
                    ],
                },
            )
        failure = arc.failure()
        if failure is not None:
            # Nothing of it is written: the day stays uncovered (a re-run tries it again) rather
            # than stored as complete from what is left of a file that is not what its path says.
            await self._event(
                "archive_failed",
                {
                    "period": what,
                    "url": arc.url,
                    "reason": failure,
                    "rows": arc.parsed_rows,
                    "malformed": arc.malformed,
                },
            )
            if unit.kind == "month":
                log.error("%s %s: %s; daily archives instead", self.symbol, what, failure)
                self._requeue = [_Unit("day", [d]) for d in unit.days]
                return
            self._refuse(unit.days[0], f"archive {arc.url.rsplit('/', 1)[-1]} not loaded: {failure}")
            return
        if arc.rows and self.last_id is not None and arc.first_id != self.last_id + 1:
            log.warning(
                "%s %s: archive starts at id %s, the previous day ended at %s",
                self.symbol,
                unit.month or unit.days[0],
                arc.first_id,
                self.last_id,
            )
        self.ctx.progress.update(self.symbol, note=f"{unit.month or unit.days[0]} archive")
        await self._store_archive(arc.table)
        if arc.rows:
            self.last_id = arc.last_id
        last_ts = int(arc.table.column("ts_ms")[-1].as_py()) if arc.rows else None

        async def finished() -> None:
            await self._finish_unit(unit.days[-1], arc.last_id, last_ts, complete=True)
            await self.ctx.days_stored(unit.days)
            if unit.kind == "month":
                rep.months_archive.append(unit.month)
            rep.days_archive.extend(unit.days)
            self.ctx.progress.update(
                self.symbol, days=len(unit.days), label=f"{unit.month or unit.days[0]} archive"
            )

        if self._tail is None:
            await finished()
        else:  # after the bulk days' attach, while the next archive is copied in
            self._then(finished)

    # ---- REST
    async def _first_id_from(self, t0: int, t1: int) -> int | None:
        """Id of the first trade at or after t0 and before t1 (hour windows, as the API requires)."""
        t = t0
        while t < t1:
            page = await self.ctx.rest.agg_trade_refs(
                self.symbol, start_ms=t, end_ms=min(t + HOUR_MS, t1) - 1, limit=1
            )
            self.report.rest_pages += 1
            if page:
                return page[0].agg_id
            t += HOUR_MS
        return None

    async def _rest_fill(self, d: date) -> None:
        ctx, rep = self.ctx, self.report
        t0 = day_start_ms(d)
        t_end = t0 + DAY_MS  # rows at or after the day's end belong to the next day
        past = d < ctx.today
        c = self.cov.get(d)
        start_id: int | None = None
        if self.last_id is not None:
            start_id = self.last_id + 1
            # Rows of this day stored densely from its first id on (a previous, interrupted run): go on after them.
            if c is not None and c.dense and c.first_id == start_id:
                start_id = c.last_id + 1
        if start_id is None:
            ctx.progress.update(self.symbol, note=f"{d} REST: finding the first id")
            start_id = await self._first_id_from(t0, min(t_end, ctx.rest.server_now_ms() + 1))
        complete = False
        last_id: int | None = None
        last_ts: int | None = None
        if start_id is not None:
            from_id = start_id
            pending: list[pa.Table] = []
            pending_rows = 0
            while True:
                page = await ctx.rest.agg_trades(self.symbol, from_id=from_id, limit=AGG_TRADES_MAX_LIMIT)
                rep.rest_pages += 1
                n = page.num_rows
                if n == 0:
                    break
                first = int(page.column("agg_id")[0].as_py())
                if first != from_id:
                    log.warning(
                        "%s: REST answered from id %d when asked from %d", self.symbol, first, from_id
                    )
                ts = page.column("ts_ms").to_numpy()
                done = False
                if ts[-1] >= t_end:
                    k = int(np.searchsorted(ts, t_end, side="left"))
                    page = page.slice(0, k)
                    done = complete = True
                if page.num_rows:
                    pending.append(page)
                    pending_rows += page.num_rows
                    last_id = int(page.column("agg_id")[-1].as_py())
                    last_ts = int(page.column("ts_ms")[-1].as_py())
                    from_id = last_id + 1
                if pending_rows >= ctx.rest_batch_rows:
                    await self._submit(pa.concat_tables(pending), "rest")
                    pending, pending_rows = [], 0
                    ctx.progress.update(self.symbol, note=f"{d} REST {ms_to_hms(last_ts)}")
                if done or n < AGG_TRADES_MAX_LIMIT:
                    break
            if pending:
                await self._submit(pa.concat_tables(pending), "rest")
        elif past:
            complete = True  # no trade at all during that day
        if past and not complete:
            # The exchange answered less than the day (it has nothing after some point yet).
            log.warning("%s %s: REST ended before the day's end", self.symbol, d)
        if last_id is not None:
            self.last_id = last_id
        elif c is not None and c.dense and self.last_id is not None and c.first_id == self.last_id + 1:
            self.last_id = c.last_id
        await self._finish_unit(d, self.last_id, last_ts, complete=complete and past)
        rep.days_rest.append(d)
        ctx.progress.update(self.symbol, days=1, label=f"{d} REST")

    # ---- the run
    async def run(self) -> SymbolReport:
        ctx = self.ctx
        queue = await self.plan()
        ctx.progress.add(self.symbol, self.report.days)
        ctx.progress.update(self.symbol, days=len(self.report.days_skipped), label="stored before")
        try:
            while queue:
                unit = queue.popleft()
                if self.ctx.unreachable is not None:
                    self._fail(unit.days, f"not tried: {self.ctx.unreachable}")
                    continue
                try:
                    await self._unit(unit, queue)
                except IpBanned:
                    raise
                except (*REST_FAILURES, archives.ArchiveError) as exc:  # ArchiveError: its download failed
                    self.ctx.note_failure(exc)
                    self._fail(unit.days, f"{type(exc).__name__}: {exc}")
            await self._settle()
        finally:
            await self._undo_tail()
            for u in queue:
                if u.task is not None and not u.task.done():
                    u.task.cancel()
            for u in queue:
                if u.task is not None:
                    with contextlib.suppress(BaseException):
                        await u.task
        if self.report.days_failed:
            await self._event(
                "days_failed",
                {"days": [d.isoformat() for d in self.report.days_failed], "reason": self._fail_reason},
            )
        self.ctx.progress.update(self.symbol, note="done")
        for days in (self.report.days_skipped, self.report.days_archive, self.report.days_rest):
            days.sort()
        return self.report

    async def _unit(self, unit: _Unit, queue: deque[_Unit]) -> None:
        """Load one unit (a day, a month, a REST day, a stored day to check)."""
        ctx = self.ctx
        if unit.kind in ("rest", "check"):
            await self._settle()  # their checkpoints and id chains follow the days before
        self._sync_last_id(unit.days[0])
        if unit.kind == "rest":
            self._prefetch(queue, unit)
            await self._rest_fill(unit.days[0])
            return
        if unit.kind == "check":
            d = unit.days[0]
            c = self.cov[d]
            if self.last_id is not None and self.last_id + 1 == c.first_id:
                self.report.days_skipped.append(d)
                self.last_id = c.last_id
                ctx.progress.update(self.symbol, days=1, label=f"{d} stored before")
            else:
                queue.appendleft(_Unit("day", [d]))
            return
        self._prefetch(queue, unit)
        try:
            arc = await self._archive(unit)
        except (archives.ArchiveMissing, _TooLarge) as exc:
            if unit.kind == "month":
                log.info(
                    "%s %s: monthly archive not used (%s); daily archives instead",
                    self.symbol,
                    unit.month,
                    exc,
                )
                queue.extendleft(reversed([_Unit("day", [d]) for d in unit.days]))
                return
            d = unit.days[0]
            self.report.archives_missing.append(d.isoformat())
            await self._event(
                "archive_missing", {"day": d.isoformat(), "url": str(exc), "filled_from": "rest"}
            )
            log.info("%s %s: no archive (%s); filling from REST", self.symbol, d, exc)
            await self._rest_fill(d)
            return
        except archives.ChecksumMismatch as exc:
            what = unit.month or unit.days[0].isoformat()
            await self._event(
                "checksum_mismatch",
                {"period": what, "url": exc.url, "expected": exc.expected, "actual": exc.actual},
            )
            if unit.kind == "month":
                log.error("%s %s: %s; daily archives instead", self.symbol, what, exc)
                queue.extendleft(reversed([_Unit("day", [d]) for d in unit.days]))
                return
            self._refuse(unit.days[0], str(exc))
            return
        except archives.ArchiveError as exc:
            what = unit.month or unit.days[0].isoformat()
            await self._event("archive_error", {"period": what, "error": str(exc)})
            if isinstance(exc.__cause__, REST_FAILURES) and unit.kind != "month":
                raise  # the network kept failing, not the file: the day failed (run())
            if unit.kind == "month":
                queue.extendleft(reversed([_Unit("day", [d]) for d in unit.days]))
                return
            self._refuse(unit.days[0], str(exc))
            return
        await self._load_archive(unit, arc)
        if self._requeue:
            queue.extendleft(reversed(self._requeue))
            self._requeue = []

    def _fail(self, days: Sequence[date], why: str) -> None:
        """Days that could not be loaded (REST or the network kept failing after every retry): not
        checkpointed or covered, reported, and the run exits 1; a rerun loads them."""
        first = not self.report.days_failed
        self._fail_reason = self._fail_reason or why
        self.report.days_failed.extend(days)
        span = f"{days[0]}" if len(days) == 1 else f"{days[0]}..{days[-1]}"
        msg = f"{self.symbol} {span}: day{'s' if len(days) > 1 else ''} failed: {why}"
        if first or not why.startswith("not tried"):
            log.error("%s", msg)
            self.report.errors.append(msg)
        self.last_id = None
        self.ctx.progress.update(self.symbol, days=len(days), label=f"{span} failed")

    async def _archive(self, unit: _Unit) -> archives.AggTradesArchive:
        """The unit's archive, downloaded and parsed while the last bulk day's indexes build; when
        there is none to load, what that day left is done first (the unit then does something else)."""
        assert unit.task is not None
        try:
            return await unit.task
        except (archives.ArchiveError, _TooLarge):
            await self._settle()
            raise

    def _sync_last_id(self, d: date) -> None:
        """Days skipped as complete just before `d`: the id before `d` is that day's last id."""
        prev = d - timedelta(days=1)
        if prev in self.report.days_skipped:
            self.last_id = self.cov[prev].last_id

    def _refuse(self, d: date, why: str) -> None:
        msg = f"{self.symbol} {d}: day refused: {why}"
        log.error("%s", msg)
        self.report.days_refused.append(d)
        self.report.errors.append(msg)
        self.last_id = None
        self.ctx.progress.update(self.symbol, days=1, label=f"{d} refused")


class _TooLarge(Exception):
    pass


def ms_to_hms(t: int | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t / 1000, tz=UTC).strftime("%H:%M:%S")


@dataclass
class _Run:
    settings: Settings
    rest: BinanceRest
    session: aiohttp.ClientSession
    pool: Any
    writer: Any
    progress: DayProgress
    start: date
    end: date
    today: date
    archive_url: str
    cache_dir: Path | None
    tmp_dir: Path | None
    prefetch: int
    use_monthly: bool
    monthly_max_bytes: int
    batch_rows: int
    rest_batch_rows: int
    bulk_load: bool = True  # whole days with no partition yet by the bulk path (sink/bulk.py)
    symbols_total: int = 1
    timescaledb: bool = False
    # archives parse one at a time per two cores (pyarrow's CSV reader uses them all already), in
    # the order they were asked for: the archive asked first is ready first, whichever download ends
    # first, and its load overlaps the next one's parse
    parse_turns: archives.ParseTurns = field(
        default_factory=lambda: archives.ParseTurns((os.cpu_count() or 2) // 2)
    )
    # and they download one at a time, in the same order: three archives fetched at once shared the
    # link and all ended together, the first (the one a load waits for) about three times later
    download_turns: archives.ParseTurns = field(default_factory=lambda: archives.ParseTurns(1))
    _stored: dict[date, int] = field(default_factory=dict)
    unreachable: str | None = None  # why the exchange is taken as gone: the days left are not tried

    def note_failure(self, exc: BaseException) -> None:
        """A REST call or download that failed after every retry; one that got no answer at all
        (Unreachable, a refused connection) means the exchange is gone for this run."""
        cause = exc.__cause__ if isinstance(exc, archives.ArchiveError) else exc
        if self.unreachable is None and isinstance(
            cause, Unreachable | aiohttp.ClientConnectorError | ConnectionRefusedError
        ):
            self.unreachable = f"the exchange at {self.rest.base_url} stopped answering ({exc})"

    async def days_stored(self, days: Sequence[date]) -> None:
        """Days a symbol finished from archives. On TimescaleDB a day every symbol of the run has
        finished is compressed at once when it is older than the compression policy's horizon (the
        policy does the rest): a loaded day is never merged into again (coverage skips it)."""
        if not self.timescaledb:
            return
        for d in days:
            self._stored[d] = self._stored.get(d, 0) + 1
            if self._stored[d] == self.symbols_total:
                async with self.pool.acquire() as conn:
                    await bulk.compress_day(conn, KIND, d)


# ---------------------------------------------------------------- entry point


def _as_date(value: date | str | None, name: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise HistoricalError(f"{name}: expected YYYY-MM-DD, got {value!r}") from None


async def check_symbols(rest: BinanceRest, symbols: Iterable[str]) -> list[str]:
    """Upper-cased, de-duplicated symbols; UnknownSymbols when exchangeInfo does not list one."""
    return known_symbols(await rest.symbols(), symbols, rest.base_url)


def known_symbols(listed: Mapping[str, Any], symbols: Iterable[str], base_url: str) -> list[str]:
    """check_symbols against an exchangeInfo already fetched (`BinanceRest.symbols()`)."""
    wanted = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
    if not wanted:
        raise HistoricalError("no symbol given")
    unknown = [s for s in wanted if s not in listed]
    if unknown:
        raise UnknownSymbols(unknown, base_url)
    return wanted


def first_listed_day(listed: Mapping[str, Any], symbols: Iterable[str]) -> date | None:
    """The earliest UTC day any of `symbols` was listed (onboardDate in `BinanceRest.symbols()`)."""
    days = [
        datetime.fromtimestamp(int(info["onboardDate"]) / 1000, tz=UTC).date()
        for s in symbols
        if isinstance(info := listed.get(s), dict) and str(info.get("onboardDate", "")).isdigit()
    ]
    return min(days) if days else None


async def collect_aggtrades_historical(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    start_day: date | str | None = None,
    end_day: date | str | None = None,
    *,
    days: int | None = None,
    progress: bool = True,
    writer: Any = None,
    weight_budget: int | None = None,
    prefetch: int = 2,
    use_monthly: bool = True,
    monthly_max_bytes: int = 256 << 20,
    cache_archives: bool = False,
    symbol_concurrency: int = 2,
    batch_rows: int = 100_000,
    rest_batch_rows: int = 10_000,
    rest: BinanceRest | None = None,
    bulk_load: bool = True,
) -> HistoricalReport:
    """Load aggregate trades of `symbols` for the UTC days [start_day, end_day] (see the module doc).

    `days=N` instead of a range: the last N complete days plus today so far (server clock). end_day
    after today is clamped to today. `writer`: a started Writer to use (flushed, not closed); without
    one a Writer(dsn, spill_dir=settings.home/'spill') is started and closed here. `bulk_load`:
    archive days with no partition yet go by the bulk path (False: all through the writer).
    """
    t_start = time.monotonic()
    start = _as_date(start_day, "start")
    end = _as_date(end_day, "end")
    if days is None and start is None:
        raise HistoricalError("give a start day (and an end day) or a number of days")
    if days is not None and days < 0:
        raise HistoricalError(f"days: expected a number >= 0, got {days}")
    if start is not None and end is not None and end < start:
        raise HistoricalError(f"end {end} is before start {start}")
    own_session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    )
    own_rest = rest is None
    retries: list[RetryNote] = []
    client = rest or BinanceRest(
        settings.rest_url, weight_budget_per_min=weight_budget, retry_malformed=True, on_retry=retries.append
    )
    pool = None
    own_writer = writer is None
    try:
        await client.open()
        now_ms = await client.server_time()
        today = ms_day(now_ms)
        contracts = await client.symbols()  # one exchangeInfo for the check and the listing dates
        wanted = known_symbols(contracts, symbols, client.base_url)
        if days is not None:
            start, end = today - timedelta(days=days), today
        listed = first_listed_day(contracts, wanted)
        if listed is not None and start is not None and start < listed:
            # nothing trades before the contract was listed: do not walk those days (archives 404,
            # REST pages empty) at the REST budget
            log.info("start %s is before %s was listed; starting at %s", start, ", ".join(wanted), listed)
            start = listed
        assert start is not None
        if end is None or end > today:
            end = today
        if start > today:
            raise HistoricalError(f"start {start} is after today ({today}, exchange clock)")
        # a bulk load holds 3 connections (its own, one per index build), the next day's COPY beside
        # it 1, a checkpoint 1
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4 * max(1, symbol_concurrency) + 1)
        if bulk_load:
            await bulk.drop_stale_load_tables(pool)  # the disk a killed run's day tables took
        if own_writer:
            from microstructure.ingest.sink.writer import Writer

            writer = Writer(dsn, settings.home / "spill")
            await writer.start()
        cache_dir = settings.home / "archives" if cache_archives else None
        tmp_dir = settings.home / "tmp"
        with DayProgress("aggTrades historical", bar=progress and sys.stderr.isatty()) as prog:
            ctx = _Run(
                settings=settings,
                rest=client,
                session=own_session,
                pool=pool,
                writer=writer,
                progress=prog,
                start=start,
                end=end,
                today=today,
                archive_url=settings.archive_url,
                cache_dir=cache_dir,
                tmp_dir=tmp_dir,
                prefetch=max(0, prefetch),
                use_monthly=use_monthly,
                monthly_max_bytes=monthly_max_bytes,
                batch_rows=batch_rows,
                rest_batch_rows=rest_batch_rows,
                bulk_load=bulk_load,
                symbols_total=len(wanted),
                timescaledb=await bulk.on_timescaledb(pool),
            )
            sem = asyncio.Semaphore(max(1, symbol_concurrency))

            async def one(sym: str) -> SymbolReport:
                async with sem:
                    return await _SymbolRun(ctx, sym).run()

            results = await asyncio.gather(*(one(s) for s in wanted))
        await writer.flush()
        report = HistoricalReport(start, end, today, {r.symbol: r for r in results})
        async with pool.acquire() as conn:
            for r in results:
                await final_state(conn, r.symbol, start, end, r)
        report.rest = client.stats
        report.rest_retries = list(retries)
        report.elapsed_s = time.monotonic() - t_start
        for line in report.summary_lines():
            log.info("%s", line)
        return report
    finally:
        if pool is not None and retries:
            with contextlib.suppress(Exception):
                await record_retries(pool, retries)
        if own_writer and writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()
        if pool is not None:
            await pool.close()
        if own_rest:
            await client.close()
        await own_session.close()
