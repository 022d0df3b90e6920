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
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
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
from microstructure.ingest.records import AGG_TRADES
from microstructure.ingest.sink.writer import open_writer

log = logging.getLogger(__name__)

COLLECTOR = "aggtrades-live"  # in ingest_events
COLLECTOR_STREAM = "aggTrade"  # its messages in Health
REST_PAGE = 1000
# A gap wider than this is not fetched page by page from REST (1,000 ids per request, weight 20):
# it stays an open gap in agg_trade_gaps, shown by `status`, for historical mode (archives) to fill.
MAX_REST_FILL_IDS = 500_000


@dataclass
class SymbolLive:
    ws_rows: int = 0
    rest_rows: int = 0
    duplicates: int = 0
    gaps_detected: int = 0
    gap_ids_filled: int = 0
    gaps_left_for_historical: int = 0


@dataclass
class LiveReport:
    symbols: dict[str, SymbolLive] = field(default_factory=dict)
    seconds: float = 0.0
    malformed: int = 0
    reconnects: int = 0
    rotations: int = 0
    writer: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

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
                f"{sym}: {s.ws_rows:,} from websocket, {s.rest_rows:,} by REST ({s.gaps_detected} gaps), "
                f"{s.duplicates:,} duplicates dropped"
                + (
                    f"; {s.gaps_left_for_historical} gaps too wide for REST left open: run --mode historical"
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
        lines.extend(f"error: {e}" for e in self.errors)
        return lines


class _Buffer:
    """Columns of one symbol's pending rows (plain lists: appends are cheap; Arrow at flush)."""

    __slots__ = ("a", "f", "l", "m", "p", "q", "recv", "t")

    def __init__(self) -> None:
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

    def take(self) -> pa.Table:
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
        self.__init__()  # type: ignore[misc]
        return table


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
    ) -> None:
        self.settings = settings
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
        self.buffers = {s: _Buffer() for s in self.symbols}
        self.report = LiveReport(symbols={s: SymbolLive() for s in self.symbols})
        self.gap_queue: asyncio.Queue[tuple[str, int, int | None, int | None]] = asyncio.Queue()
        self.banned: IpBanned | None = None  # a 418 from REST: the run stops, nothing more is sent

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
        buf = self.buffers.get(sym)
        if buf is None:
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
                self.gap_queue.put_nowait((sym, prev + 1, a - 1, None))
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
        buf.a.append(a)
        buf.p.append(p)
        buf.q.append(q)
        buf.f.append(f)
        buf.l.append(last_trade)
        buf.t.append(t)
        buf.m.append(m)
        buf.recv.append(recv_ms)
        stats.ws_rows += 1
        if len(buf) >= self.batch_rows:
            self.writer.submit_nowait("agg_trades", sym, buf.take())

    async def flush_buffers(self) -> None:
        for sym, buf in self.buffers.items():
            if len(buf):
                await self.writer.submit("agg_trades", sym, buf.take())

    async def flusher(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.batch_ms / 1000)
            await self.flush_buffers()

    # -- REST fills ----------------------------------------------------------------------------
    async def fill(self, sym: str, from_id: int, to_id: int | None, until_ms: int | None) -> int:
        """Fetch ids from `from_id` up to `to_id` (inclusive) or, without one, up to trade time `until_ms`."""
        got = 0
        next_id = from_id
        while to_id is None or next_id <= to_id:
            page = await self.rest.agg_trades(sym, from_id=next_id, limit=REST_PAGE)
            if page.num_rows == 0:
                break
            ids = page.column("agg_id").to_numpy()
            keep = np.ones(page.num_rows, dtype=bool)
            if to_id is not None:
                keep &= ids <= to_id
            if until_ms is not None:
                keep &= page.column("ts_ms").to_numpy() <= until_ms
            if keep.any():
                chunk = page.filter(pa.array(keep))
                # a gap fill: its neighbours may still be in a websocket batch not yet committed,
                # so the writer must not take them for missing (sink/coverage.py)
                await self.writer.submit("agg_trades", sym, chunk, gap_fill=True)
                got += chunk.num_rows
            if not keep.all() or page.num_rows < REST_PAGE:
                break
            next_id = int(ids[-1]) + 1
        stats = self.report.symbols[sym]
        stats.rest_rows += got
        stats.gap_ids_filled += got
        if self.events is not None and to_id is not None:
            self.events.record(COLLECTOR, sym, "gap_fill", {"from_id": from_id, "to_id": to_id, "rows": got})
        return got

    async def gap_filler(self) -> None:
        while True:
            sym, lo, hi, until = await self.gap_queue.get()
            try:
                if self.banned is None:  # banned: the gap stays open in the database, for a later run
                    await self.fill(sym, lo, hi, until)
            except IpBanned as exc:
                self._ban(exc)
            except Exception as exc:  # a failed fill leaves an open gap in the database, visible in status
                self.report.errors.append(f"{sym}: REST fill {lo}..{hi} failed: {exc}")
                log.error(
                    "REST gap fill failed",
                    extra={"symbol": sym, "from_id": lo, "to_id": hi, "error": str(exc)},
                )
            finally:
                self.gap_queue.task_done()

    async def run(self, shared: SharedStreams | None = None) -> LiveReport:
        """Until `stop`: on `shared` connections (collect all) or on this collector's own, two
        independent sets of them with `redundant`."""
        started = time.monotonic()
        streams = [f"{s.lower()}@aggTrade" for s in self.symbols]
        filler = asyncio.create_task(self.gap_filler())
        flusher = asyncio.create_task(self.flusher())
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
        try:
            await self.stop.wait()
        finally:
            stop_ms = int(time.time() * 1000)
            for t in conns:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self.flush_buffers()
            await self.gap_queue.join()  # gaps seen so far are filled
            # The tail: whatever traded up to the stop but did not arrive.
            for sym in self.symbols:
                if self.last[sym] is not None and self.banned is None:
                    try:
                        await self.fill(sym, self.last[sym] + 1, None, stop_ms)  # type: ignore[operator]
                    except IpBanned as exc:
                        self._ban(exc)
                    except Exception as exc:
                        self.report.errors.append(f"{sym}: REST tail fill failed: {exc}")
            filler.cancel()
            flusher.cancel()
            for t in (filler, flusher):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self.report.seconds = time.monotonic() - started
        totals = [c.totals() for c in sets]
        self.report.malformed = self.health.stream(COLLECTOR_STREAM).malformed + (
            sum(t.malformed for t in totals) if shared is None else 0
        )
        self.report.reconnects = sum(t.reconnects for t in totals)  # stale ones included
        self.report.rotations = sum(c.rotations for c in sets)
        return self.report


async def stored_last_ids(dsn: str, symbols: Sequence[str]) -> dict[str, int | None]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT s AS symbol, (SELECT max(agg_id) FROM agg_trades WHERE symbol = s) AS last_id "
            "FROM unnest($1::text[]) AS s",
            [s.upper() for s in symbols],
        )
    finally:
        await conn.close()
    return {r["symbol"]: r["last_id"] for r in rows}


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
    weight_budget: int = 1200,
    max_rest_fill_ids: int = MAX_REST_FILL_IDS,
    shared_streams: SharedStreams | None = None,
) -> LiveReport:
    """Collect live aggregate trades until `live_seconds` pass, `stop_event` is set or SIGINT/SIGTERM;
    on `shared_streams` (collect all) instead of connections of its own when given.

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
        collector = AggTradesLive(
            settings, symbols, writer=writer, rest=rest, stop=stop, health=health or Health(), events=events,
            last_ids=await stored_last_ids(dsn, symbols), redundant=redundant, batch_rows=batch_rows,
            batch_ms=batch_ms, rotate_after=rotate_after, stale_timeout=stale_timeout,
            max_rest_fill_ids=max_rest_fill_ids,
        )  # fmt: skip
        report = await collector.run(shared_streams)
        # bounded even on a shared writer (its owner closes it), so a stop while the database is away still stops
        await writer.flush(timeout=writer.close_timeout)
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
        if own_writer and writer is not None:
            await writer.close()
