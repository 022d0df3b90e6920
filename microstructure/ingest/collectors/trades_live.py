"""Live aggregate trades: combined websockets, REST gap fills, batches to the writer.

Per symbol the collector keeps the last aggregate id handed to the writer (at start: the largest id
stored, so a restart continues with no gap). A websocket id at or below it is a duplicate (redundant
connections, rotation overlap, REST fills) and is dropped; an id above it + 1 means ids were lost
(dropped messages, a reconnect): the missing range is fetched by REST `fromId` pages in the
background while the stream goes on. When the run ends, the tail up to the stop time is fetched the
same way, so the stored sequence is whole from the first id to the last.

Connections (streams.SharedStreams): one combined stream per up to 200 streams, or a share of the
connections `collect all` makes for every collector; a connection older than `rotate_after` is
replaced by a new one that starts before the old one stops (overlap), so rotation before Binance's
24 h limit loses nothing; `redundant` keeps a second, independent set of connections.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.config import Settings
from microstructure.ingest.binance.rest import BinanceRest, IpBanned
from microstructure.ingest.binance.streams import SharedStreams
from microstructure.ingest.collectors.trades_historical import check_symbols
from microstructure.ingest.health import EventLog, Health
from microstructure.ingest.records import AGG_TRADES, GAP_KIND, GAP_RECORDS
from microstructure.ingest.sink import coverage
from microstructure.ingest.sink.writer import open_writer, writer_problems
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

COLLECTOR = "aggtrades-live"  # in ingest_events
COLLECTOR_STREAM = "aggTrade"  # its messages in Health
REST_PAGE = 1000
# A gap wider than this is not fetched page by page from REST (1,000 ids per request, weight 20):
# it stays an open gap in agg_trade_gaps, shown by `status`, for historical mode (archives) to fill.
MAX_REST_FILL_IDS = 500_000
# REST aggTrades reach back about a year: an open gap older than this is left for historical mode.
REST_HORIZON_MS = 360 * 86_400_000
FILL_BACKOFF_MAX = 30.0  # seconds between tries of a failing REST fill, at most
GAP_SWEEP_S = 30.0  # how often the open gaps stored in the database are read again
STOP_FILL_S = 10.0  # at the stop, how long pending fills and the tail may still take


class GapRanges:
    """Missing aggregate ids per symbol waiting for a REST fill: sorted, disjoint, inclusive ranges."""

    def __init__(self) -> None:
        self.ranges: dict[str, list[tuple[int, int]]] = {}

    def add(self, sym: str, lo: int, hi: int) -> None:
        if hi < lo:
            return
        merged: list[tuple[int, int]] = []
        for a, b in self.ranges.get(sym, []):
            if b < lo - 1 or a > hi + 1:
                merged.append((a, b))
            else:
                lo, hi = min(lo, a), max(hi, b)
        bisect.insort(merged, (lo, hi))
        self.ranges[sym] = merged

    def remove(self, sym: str, lo: int, hi: int) -> None:
        out: list[tuple[int, int]] = []
        for a, b in self.ranges.get(sym, []):
            if b < lo or a > hi:
                out.append((a, b))
                continue
            if a < lo:
                out.append((a, lo - 1))
            if b > hi:
                out.append((hi + 1, b))
        if out:
            self.ranges[sym] = out
        else:
            self.ranges.pop(sym, None)

    def first(self, sym: str) -> tuple[int, int] | None:
        r = self.ranges.get(sym)
        return r[0] if r else None

    def symbols(self) -> list[str]:
        return [s for s, r in self.ranges.items() if r]

    def within(self, sym: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of `sym`'s ranges that fall between `lo` and `hi`."""
        return [(max(a, lo), min(b, hi)) for a, b in self.ranges.get(sym, []) if b >= lo and a <= hi]

    def contains(self, sym: str, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` fall in a range of `sym`."""
        keep = np.zeros(len(ids), dtype=bool)
        for a, b in self.ranges.get(sym, []):
            keep |= (ids >= a) & (ids <= b)
        return keep

    def missing(self, sym: str | None = None) -> int:
        syms = [sym] if sym is not None else list(self.ranges)
        return sum(b - a + 1 for s in syms for a, b in self.ranges.get(s, []))

    def count(self) -> int:
        return sum(len(r) for r in self.ranges.values())

    def __bool__(self) -> bool:
        return any(self.ranges.values())


@dataclass
class SymbolLive:
    ws_rows: int = 0
    rest_rows: int = 0
    duplicates: int = 0
    gaps_detected: int = 0
    gap_ids_filled: int = 0
    gaps_left_for_historical: int = 0
    gaps_from_earlier_runs: int = 0  # open gaps in the database at start, filled by this run
    fill_requests: int = 0
    fill_retries: int = 0  # REST fill attempts that failed and were tried again
    ids_left_open: int = 0  # still missing at the end (recorded in agg_trade_gaps for the next run)


@dataclass
class LiveReport:
    symbols: dict[str, SymbolLive] = field(default_factory=dict)
    seconds: float = 0.0
    malformed: int = 0
    reconnects: int = 0
    rotations: int = 0
    writer: dict[str, Any] = field(default_factory=dict)
    rest: dict[str, Any] = field(default_factory=dict)
    rest_line: str = ""  # requests, weight and budget waits (when the collector has its own client)
    errors: list[str] = field(default_factory=list)
    tails_left: dict[str, int] = field(default_factory=dict)  # symbol -> last id, tail not fetched at stop
    stop_waited_for_budget: bool = False  # the stop's fills ended for want of REST budget

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary_lines(self) -> list[str]:
        lines = [
            f"aggTrades live: {self.seconds:.1f} s, {self.reconnects} reconnects, {self.rotations} rotations, "
            f"{self.malformed} malformed"
        ]
        for sym, s in self.symbols.items():
            lines.append(
                f"{sym}: {s.ws_rows:,} from websocket, {s.rest_rows:,} by REST ({s.gaps_detected} gaps"
                + (f", {s.gaps_from_earlier_runs} left by earlier runs" if s.gaps_from_earlier_runs else "")
                + f"; {s.fill_requests} requests, {s.fill_retries} retried), {s.duplicates:,} duplicates dropped"
                + (
                    f"; {s.gaps_left_for_historical} gaps too wide or too old for REST left open: "
                    "run --mode historical"
                    if s.gaps_left_for_historical
                    else ""
                )
            )
        if self.writer:
            p99 = self.writer.get("commit_latency_p99_ms")
            lines.append(
                f"writer: {self.writer.get('rows_inserted', 0):,} rows inserted"
                + (f", commit latency p99 {p99:.0f} ms" if p99 is not None else "")
            )
        if self.tails_left:
            lines.append(
                f"stop: the tails of {len(self.tails_left)} symbols after their last id not fetched"
                + (" (they would have waited for REST budget)" if self.stop_waited_for_budget else "")
                + ": recorded (ingest_events 'tail_left'); the next live run or --mode historical fills them"
            )
        if self.rest_line:
            lines.append(self.rest_line)
        lines.extend(f"error: {e}" for e in self.errors)
        return lines


class _Buffer:
    """Columns of the pending rows of every symbol, with each row's symbol (its index into `names`):
    plain lists, appends are cheap; one Arrow table at flush whatever the symbol count."""

    __slots__ = ("a", "f", "l", "m", "names", "p", "q", "recv", "s", "t")

    def __init__(self, names: pa.Array) -> None:
        self.names = names
        self.s: list[int] = []
        self.a: list[int] = []
        self.p: list[float] = []
        self.q: list[float] = []
        self.f: list[int] = []
        self.l: list[int] = []
        self.t: list[int] = []
        self.m: list[bool] = []
        self.recv: list[int] = []

    def __len__(self) -> int:
        return len(self.a)

    def take(self) -> tuple[pa.Array, pa.Table]:
        """(each row's symbol, the rows); the buffer is empty after."""
        symbols = pa.DictionaryArray.from_arrays(pa.array(self.s, pa.int32()), self.names)
        table = pa.table(
            {
                "agg_id": pa.array(self.a, pa.int64()),
                "ts_ms": pa.array(self.t, pa.int64()),
                "price": pa.array(self.p, pa.float64()),
                "quantity": pa.array(self.q, pa.float64()),
                "first_trade_id": pa.array(self.f, pa.int64()),
                "last_trade_id": pa.array(self.l, pa.int64()),
                "is_buyer_maker": pa.array(self.m, pa.bool_()),
                "recv_ms": pa.array(self.recv, pa.int64()),
            },
            schema=AGG_TRADES,
        )
        self.__init__(self.names)  # type: ignore[misc]
        return symbols, table


class AggTradesLive:
    def __init__(
        self,
        settings: Settings,
        symbols: Sequence[str],
        *,
        writer: Any,
        rest: BinanceRest,
        stop: asyncio.Event,
        health: Health,
        events: EventLog | None,
        last_ids: dict[str, int | None],
        redundant: bool,
        batch_rows: int,
        batch_ms: int,
        rotate_after: float,
        stale_timeout: float,
        max_rest_fill_ids: int = MAX_REST_FILL_IDS,
        dsn: str | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.max_rest_fill_ids = max_rest_fill_ids
        self.symbols = [s.upper() for s in symbols]
        self.writer = writer
        self.rest = rest
        self.stop = stop
        self.health = health
        self.events = events
        self.last = dict(last_ids)
        self.redundant = redundant
        self.batch_rows = batch_rows
        self.batch_ms = batch_ms
        self.rotate_after = rotate_after
        self.stale_timeout = stale_timeout
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.buffer = _Buffer(pa.array(self.symbols, pa.string()))
        self.report = LiveReport(symbols={s: SymbolLive() for s in self.symbols})
        self.gaps = GapRanges()  # ids waiting for a REST fill (each recorded in agg_trade_gaps first)
        self.gap_wake = asyncio.Event()
        self.fill_busy = False
        self.banned: IpBanned | None = None  # a 418 from REST: the run stops, nothing more is sent
        self.gap_sweep_s = GAP_SWEEP_S
        self._poke = getattr(writer, "poke", None)
        self.stop_fill_s = STOP_FILL_S
        # a symbol another run of this process goes on collecting (follow.LiveSet) needs no tail here
        self.handed_over: Callable[[str], bool] | None = None

    def _ban(self, exc: IpBanned) -> None:
        """A 418 while filling: every further REST request would be refused for the ban's length, so
        the run stops (what is buffered is still flushed) and collect_aggtrades_live raises it."""
        if self.banned is None:
            self.banned = exc
            self.report.errors.append(str(exc))
            log.error("REST answered 418: stopping the live run", extra={"error": str(exc)})
        self.stop.set()

    # -- messages ------------------------------------------------------------------------------
    def on_message(self, stream: str, data: dict[str, Any], recv_ms: int) -> None:
        if self.stop.is_set():
            return  # a shared connection still delivering: the REST tail fill covers from self.last on
        sym = str(data["s"]).upper()
        code = self.index.get(sym)
        if code is None:
            raise KeyError(f"unexpected symbol {sym!r}")
        a = int(data["a"])
        p, q = float(data["p"]), float(data["q"])
        f, last_trade, t, m = int(data["f"]), int(data["l"]), int(data["T"]), data["m"]
        if not isinstance(m, bool):
            raise TypeError(f"m: expected a boolean, got {m!r}")
        stats = self.report.symbols[sym]
        prev = self.last[sym]
        if prev is not None and a <= prev:
            stats.duplicates += 1
            return
        if prev is not None and a > prev + 1:
            stats.gaps_detected += 1
            if a - 1 - prev <= self.max_rest_fill_ids:
                self.record_gap(sym, prev + 1, a - 1)
            else:
                stats.gaps_left_for_historical += 1
                log.warning(
                    "gap too wide for REST, left open for historical mode",
                    extra={"symbol": sym, "from_id": prev + 1, "to_id": a - 1},
                )
                if self.events is not None:
                    self.events.record(
                        COLLECTOR,
                        sym,
                        "gap_left_open",
                        {"from_id": prev + 1, "to_id": a - 1, "ids": a - 1 - prev},
                    )
        self.last[sym] = a
        buf = self.buffer
        buf.s.append(code)
        buf.a.append(a)
        buf.p.append(p)
        buf.q.append(q)
        buf.f.append(f)
        buf.l.append(last_trade)
        buf.t.append(t)
        buf.m.append(m)
        buf.recv.append(recv_ms)
        stats.ws_rows += 1
        n = len(buf)
        if n >= self.batch_rows:
            symbols, table = buf.take()
            self.writer.submit_rows("agg_trades", table, symbols)
        elif n == 1 and self._poke is not None:
            self._poke()  # an idle writer takes the rows as soon as this read has been handled

    def take_buffers(self) -> list[tuple[str, str | pa.Array, pa.Table]]:
        """What the writer takes when it is free (its pull source): the pending rows of every symbol,
        one table with each row's symbol (a silent symbol costs nothing; no table per symbol)."""
        if not len(self.buffer):
            return []
        symbols, table = self.buffer.take()
        return [("agg_trades", symbols, table)]

    async def flush_buffers(self) -> None:
        for kind, symbols, table in self.take_buffers():
            self.writer.submit_rows(kind, table, symbols)

    async def flusher(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.batch_ms / 1000)
            await self.flush_buffers()

    # -- gaps: recorded, then filled ----------------------------------------------------------
    def record_gap(self, sym: str, lo: int, hi: int) -> None:
        """A gap is written to agg_trade_gaps (through the writer, ahead of its fill and spilled to disk
        with the rows when the database is away) before it is queued for REST: a crash or a failed fill
        leaves it open in the database, where the next run (or this one's sweep) finds it."""
        record = pa.Table.from_arrays(
            [
                pa.array([lo], pa.int64()),
                pa.array([hi], pa.int64()),
                pa.array([int(time.time() * 1000)], pa.int64()),
            ],
            schema=GAP_RECORDS,
        )
        self.writer.submit_nowait(GAP_KIND, sym, record)
        self.gaps.add(sym, lo, hi)
        self.gap_wake.set()

    def queue_stored_gaps(self, rows: list[tuple[str, int, int, int | None]], *, at_start: bool) -> None:
        """Open gaps read from the database: those REST can still serve join the fill queue; older or
        wider ones are left for historical mode and said so."""
        now = int(time.time() * 1000)
        for sym, lo, hi, before_ms in rows:
            if sym not in self.report.symbols:
                continue
            stats = self.report.symbols[sym]
            too_old = before_ms is not None and now - before_ms > REST_HORIZON_MS
            if hi - lo + 1 > self.max_rest_fill_ids or too_old:
                if at_start:
                    stats.gaps_left_for_historical += 1
                    log.warning(
                        "open gap %s beyond what REST serves, left for historical mode",
                        "older than a year" if too_old else "too wide",
                        extra={"symbol": sym, "from_id": lo, "to_id": hi},
                    )
                continue
            if self.gaps.missing(sym) and bool(self.gaps.contains(sym, np.array([lo, hi])).all()):
                continue
            if at_start:
                stats.gaps_from_earlier_runs += 1
            self.gaps.add(sym, lo, hi)
        if self.gaps:
            self.gap_wake.set()

    async def fill_page(
        self, sym: str, from_id: int, *, until_ms: int | None = None, priority: int | None = None
    ) -> tuple[int, int, bool]:
        """One REST `fromId` page (1,000 ids) from `from_id`: the rows in pending gaps of `sym` (or, for
        the tail, every row up to trade time `until_ms`) go to the writer. (last id served, rows kept,
        whether the exchange has more after it)."""
        from microstructure.ingest.binance.rest import LOW

        stats = self.report.symbols[sym]
        stats.fill_requests += 1
        page = await self.rest.agg_trades(
            sym, from_id=from_id, limit=REST_PAGE, priority=LOW if priority is None else priority
        )
        if page.num_rows == 0:
            return from_id - 1, 0, False
        ids = np.asarray(page.column("agg_id").to_numpy(), dtype=np.int64)
        if until_ms is None:
            keep = self.gaps.contains(sym, ids)
        else:
            keep = page.column("ts_ms").to_numpy() <= until_ms
        got = int(keep.sum())
        if got:
            chunk = page if keep.all() else page.filter(pa.array(keep))
            # a REST fill: its neighbours may still be in a websocket batch not yet committed, so the
            # writer must not take them for missing (sink/coverage.py)
            await self.writer.submit("agg_trades", sym, chunk, gap_fill=True)
        stats.rest_rows += got
        stats.gap_ids_filled += got
        more = page.num_rows >= REST_PAGE and (until_ms is None or bool(keep.all()))
        return int(ids[-1]), got, more

    async def fill_next(self, priority: int | None = None) -> bool:
        """Fill the lowest pending ids of the symbol that waited longest: one page serves every gap
        within its 1,000 ids, so neighbouring gaps share a request. False when nothing is pending."""
        syms = self.gaps.symbols()
        if not syms:
            return False
        sym = syms[0]
        lo, _ = self.gaps.first(sym)  # type: ignore[misc]
        last, got, _ = await self.fill_page(sym, lo, priority=priority)
        if last < lo:
            raise RuntimeError(f"REST served no aggregate trade from id {lo}")
        closed = self.gaps.within(sym, lo, last)  # a page holds every id from `lo` to its last one
        self.gaps.remove(sym, lo, last)
        # round robin: the symbol goes to the back of the queue
        if sym in self.gaps.ranges:
            self.gaps.ranges[sym] = self.gaps.ranges.pop(sym)
        if self.events is not None:
            for a, b in closed:  # one event per gap the page closed; aggregate ids are dense
                detail = {"from_id": a, "to_id": b, "rows": b - a + 1, "page_from_id": lo, "page_rows": got}
                self.events.record(COLLECTOR, sym, "gap_fill", detail)
        return True

    async def gap_filler(self) -> None:
        """Fill pending gaps one page at a time; any failure is retried with backoff (the gap stays
        pending and recorded), a 418 stops the run."""
        failures = 0
        while True:
            if not self.gaps:
                self.gap_wake.clear()
                await self.gap_wake.wait()
                continue
            if self.banned is not None:
                return
            self.fill_busy = True
            try:
                await self.fill_next()
                failures = 0
            except IpBanned as exc:
                self._ban(exc)
                return
            except Exception as exc:  # malformed reply, network, retries exhausted: try again later
                failures += 1
                sym = (self.gaps.symbols() or ["?"])[0]
                if sym in self.report.symbols:
                    self.report.symbols[sym].fill_retries += 1
                delay = min(FILL_BACKOFF_MAX, 0.5 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
                log.warning(
                    "REST gap fill failed; retrying",
                    extra={
                        "symbol": sym,
                        "error": f"{type(exc).__name__}: {exc}",
                        "retry_in_s": round(delay, 1),
                    },
                )
                self.health.add("gap_fill_retries")
                if self.events is not None and failures <= 20:
                    self.events.record(
                        COLLECTOR, sym, "gap_fill_retry", {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    )
                await asyncio.sleep(delay)
            finally:
                self.fill_busy = False

    async def gap_sweeper(self, dsn: str) -> None:
        """Every `gap_sweep_s`, while the writer has nothing waiting (so every fill of this run has
        committed), read the open gaps of the database again: gaps that spill files of an earlier run
        brought back, or that a fill could not finish, join the queue."""
        while not await sleep_or_stop(self.stop, self.gap_sweep_s):
            if not getattr(self.writer, "idle", True) or self.gaps or self.fill_busy:
                continue
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                try:
                    rows = await coverage.open_gaps_live(conn, self.symbols)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.info("open gaps not read (database unavailable): %s", exc)
                continue
            self.queue_stored_gaps(rows, at_start=False)

    async def finish_fills(self, stop_ms: int) -> None:
        """At the stop: the pending gaps, then the tail (whatever traded up to the stop but did not
        arrive), within `stop_fill_s`, no longer paced (NORMAL priority). What is not done by then stays
        recorded for the next run."""
        from microstructure.ingest.binance.rest import NORMAL, WEIGHTS

        deadline = time.monotonic() + self.stop_fill_s
        failures = 0
        tails = {
            s: self.last[s]
            for s in self.symbols
            if self.last[s] is not None and not (self.handed_over is not None and self.handed_over(s))
        }
        page_weight = WEIGHTS["/fapi/v1/aggTrades"]
        fits = getattr(self.rest, "fits_now", None)
        while self.banned is None and time.monotonic() < deadline and (self.gaps or tails):
            if fits is not None and not fits(page_weight):
                self.report.stop_waited_for_budget = True
                break  # the rest would wait for the next minute's budget: left for the next run
            try:
                if self.gaps:
                    await asyncio.wait_for(self.fill_next(NORMAL), max(0.1, deadline - time.monotonic()))
                    continue
                sym, last = next(iter(tails.items()))
                served, _, more = await asyncio.wait_for(
                    self.fill_page(sym, last + 1, until_ms=stop_ms, priority=NORMAL),
                    max(0.1, deadline - time.monotonic()),
                )
                if more and served > last:
                    tails[sym] = served
                else:
                    del tails[sym]
                failures = 0
            except IpBanned as exc:
                self._ban(exc)
            except (Exception, TimeoutError) as exc:
                failures += 1
                log.warning(
                    "REST fill at the stop failed; retrying", extra={"error": f"{type(exc).__name__}: {exc}"}
                )
                await asyncio.sleep(min(2.0, 0.2 * 2**failures))
        for sym in self.symbols:
            left = self.gaps.missing(sym)
            self.report.symbols[sym].ids_left_open = left
            if left:
                self.report.errors.append(
                    f"{sym}: {left} ids in {len(self.gaps.ranges.get(sym, []))} gaps not filled by the stop "
                    "(recorded in agg_trade_gaps: the next live run fills them)"
                )
        # A tail not fetched is not a loss: where the stream stood is recorded (ingest_events
        # 'tail_left'), and the next live run's first message opens the gap from there, filled by REST
        # (or by --mode historical from the day's archive). A stop does not wait for hundreds of them.
        self.report.tails_left = dict(tails)
        for sym, last in tails.items():
            if self.events is not None:
                self.events.record(COLLECTOR, sym, "tail_left", {"after_id": last, "stop_ms": stop_ms})

    async def run(self, shared: SharedStreams | None = None) -> LiveReport:
        """Until `stop`: on `shared` connections (collect all) or on this collector's own, two
        independent sets of them with `redundant`."""
        started = time.monotonic()
        streams = [f"{s.lower()}@aggTrade" for s in self.symbols]
        filler = asyncio.create_task(self.gap_filler())
        pull = hasattr(self.writer, "add_source")
        # a pulling writer takes the buffers itself; a timer is only for writers that do not pull
        flusher = None if pull else asyncio.create_task(self.flusher())
        sweeper = asyncio.create_task(self.gap_sweeper(self.dsn)) if self.dsn else None
        sets = [shared] if shared is not None else []
        conns = []
        if shared is None:
            for k in range(2 if self.redundant else 1):
                own = SharedStreams(
                    self.settings.ws_url, expected=1, health=self.health, events=self.events,
                    stale_timeout=self.stale_timeout, name="aggTrade" + ("ab"[k] if self.redundant else ""),
                    rotate_after=self.rotate_after,
                )  # fmt: skip
                sets.append(own)
                conns.append(asyncio.create_task(own.run(self.stop)))
        for conn_set in sets:
            conn_set.register(streams, self.on_message, COLLECTOR_STREAM)
        if pull:
            self.writer.add_source(self.take_buffers)
        else:
            self._poke = None
        try:
            await self.stop.wait()
        finally:
            if pull:
                self.writer.remove_source(self.take_buffers)
            stop_ms = int(time.time() * 1000)
            for t in conns:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self.flush_buffers()
            for t in (filler, flusher, sweeper):
                if t is None:
                    continue
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.finish_fills(stop_ms)
        self.report.seconds = time.monotonic() - started
        totals = [c.totals() for c in sets]
        self.report.malformed = self.health.stream(COLLECTOR_STREAM).malformed + (
            sum(t.malformed for t in totals) if shared is None else 0
        )
        self.report.reconnects = sum(t.reconnects for t in totals)  # stale ones included
        self.report.rotations = sum(c.rotations for c in sets)
        return self.report


async def stored_state(
    dsn: str, symbols: Sequence[str]
) -> tuple[dict[str, int | None], list[tuple[str, int, int, int | None]]]:
    """The largest stored id per symbol (where the run continues) and the open gaps (what it fills first)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT s AS symbol, (SELECT max(agg_id) FROM agg_trades WHERE symbol = s) AS last_id "
            "FROM unnest($1::text[]) AS s",
            [s.upper() for s in symbols],
        )
        gaps = await coverage.open_gaps_live(conn, [s.upper() for s in symbols])
    finally:
        await conn.close()
    return {r["symbol"]: r["last_id"] for r in rows}, gaps


async def stored_last_ids(dsn: str, symbols: Sequence[str]) -> dict[str, int | None]:
    return (await stored_state(dsn, symbols))[0]


async def collect_aggtrades_live(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    *,
    live_seconds: float | None = None,
    redundant: bool = False,
    writer: Any = None,
    stop_event: asyncio.Event | None = None,
    health: Health | None = None,
    events: EventLog | None = None,
    rest: BinanceRest | None = None,
    batch_rows: int = 5000,
    batch_ms: int = 250,
    rotate_after: float = 23 * 3600,
    stale_timeout: float = 30.0,
    weight_budget: int | None = None,
    max_rest_fill_ids: int = MAX_REST_FILL_IDS,
    shared_streams: SharedStreams | None = None,
    handed_over: Callable[[str], bool] | None = None,
) -> LiveReport:
    """Collect live aggregate trades until `live_seconds` pass, `stop_event` is set or SIGINT/SIGTERM;
    on `shared_streams` (collect all) instead of connections of its own when given. `handed_over(s)`
    true at the stop: another run goes on with symbol `s` from where the store stands (a live set's
    replacement run), so its tail is not fetched here.

    Raises UnknownSymbols (before any connection) when exchangeInfo does not list a symbol, and
    IpBanned when REST answers 418 during the run (after flushing what the run holds)."""
    own_rest = rest is None
    if own_rest:
        rest = BinanceRest(settings.rest_url, weight_budget_per_min=weight_budget)
        await rest.open()
    try:
        # Before connecting: a symbol the exchange does not list would only make the run wait in silence.
        symbols = await check_symbols(rest, symbols)
    except BaseException:
        if own_rest:
            await rest.close()
        raise
    own_stop = stop_event is None
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    if own_stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    timer = loop.call_later(live_seconds, stop.set) if live_seconds is not None else None
    own_writer = writer is None
    own_events = events is None
    events = events or EventLog(dsn)
    try:
        if own_writer:
            writer = await open_writer(settings, dsn)
        last_ids, open_gaps = await stored_state(dsn, symbols)
        collector = AggTradesLive(
            settings, symbols, writer=writer, rest=rest, stop=stop, health=health or Health(), events=events,
            last_ids=last_ids, redundant=redundant, batch_rows=batch_rows,
            batch_ms=batch_ms, rotate_after=rotate_after, stale_timeout=stale_timeout,
            max_rest_fill_ids=max_rest_fill_ids, dsn=dsn,
        )  # fmt: skip
        collector.handed_over = handed_over
        collector.queue_stored_gaps(open_gaps, at_start=True)  # a live run starts with the gaps left open
        report = await collector.run(shared_streams)
        report.rest = rest.stats.as_dict()
        if own_rest:
            report.rest_line = rest.summary_line()
        # bounded even on a shared writer (its owner closes it), so a stop while the database is away still stops
        await writer.flush(timeout=writer.close_timeout, give_up_when_down=True)
        if own_writer:
            await writer.close()
            report.errors += writer_problems(
                writer.queue_depth, writer.stats.batches_rejected, writer.stats.batches_dropped
            )
        report.writer = writer.stats.as_dict()
        if collector.banned is not None:
            for line in report.summary_lines():
                log.info("%s", line)
            raise collector.banned
        return report
    finally:
        if timer is not None:
            timer.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        if own_events:
            await events.flush()
        if own_rest:
            await rest.close()
        if own_writer and writer is not None and writer._task is not None and not writer._task.done():
            await writer.close()
