"""Order book snapshots: live top-20 books into book_snapshots, daily bookDepth archives into
book_depth_bands.

Live (`collect_book_live`):
- source 'depth20' (default): the `<s>@depth20@500ms` stream; one row per message (levels as sent,
  U/u/pu, E/T, local receive time) plus the per-snapshot values of book_values.py;
- source 'diff': a local order book per symbol from `<s>@depth@100ms` by Binance's procedure
  (orderbook.py), its top 20 sampled every 500 ms (source='diff').
Messages are buffered per symbol and turned into one Arrow batch per symbol about every second
(levels parsed and values computed for the whole batch at once), then handed to the writer.

Historical (`collect_book_historical`): data.binance.vision daily bookDepth archives
(timestamp,percentage,depth,notional). These are NOT a 20-level book: each row is the cumulative
depth (and notional) within +-1..5 % of the mid price, one set about every 30 s. They go to
book_depth_bands, never to book_snapshots.

This module also holds what the collectors of book.py, market.py and collect_all.py share: the
health counters, the ingest_events log, the combined-stream reader and a small COPY-and-merge
function for the tables the writer does not cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.config import Settings
from microstructure.ingest.book_values import LEVELS, VALUE_COLUMNS, BookValues, pad_levels
from microstructure.ingest.records import BOOK_SNAPSHOTS

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
MAX_LOGGED_MALFORMED = 20  # per stream: the first ones are logged with their text, then counted only


def now_ms() -> int:
    return int(time.time() * 1000)


# ================================================================ shared: health, events, writing


@dataclass
class StreamHealth:
    messages: int = 0
    malformed: int = 0
    reconnects: int = 0
    stale_reconnects: int = 0
    last_recv_ms: int = 0


@dataclass
class Health:
    """One health view for every collector of a process: counters by name, printed by summary()."""

    streams: dict[str, StreamHealth] = field(default_factory=lambda: defaultdict(StreamHealth))
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def stream(self, name: str) -> StreamHealth:
        return self.streams[name]

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def malformed_total(self) -> int:
        return sum(s.malformed for s in self.streams.values()) + self.counters.get("malformed", 0)

    def summary(self) -> dict[str, Any]:
        return {
            "streams": {k: vars(v).copy() for k, v in self.streams.items()},
            "counters": dict(self.counters),
        }

    def lines(self) -> list[str]:
        out = []
        for name, s in sorted(self.streams.items()):
            out.append(
                f"  {name}: {s.messages} messages, {s.malformed} malformed, {s.reconnects} reconnects "
                f"({s.stale_reconnects} for silence)"
            )
        for name, n in sorted(self.counters.items()):
            out.append(f"  {name}: {n}")
        return out


class EventLog:
    """ingest_events rows (resync, poll_miss, malformed, reconnect, ...), written in small batches.

    record() never blocks or fails; flush() writes what is pending (kept for the next try when the
    database does not answer).
    """

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self.pending: list[tuple[datetime, str, str | None, str, str]] = []
        self.written = 0
        self.counts: dict[str, int] = defaultdict(int)
        self._lock = asyncio.Lock()

    def record(self, collector: str, symbol: str | None, kind: str, detail: dict[str, Any]) -> None:
        self.counts[kind] += 1
        self.pending.append(
            (datetime.now(tz=UTC), collector, symbol, kind, json.dumps(detail, default=str)[:8000])
        )

    async def flush(self) -> None:
        if not self.pending or not self.dsn:
            return
        async with self._lock:
            batch, self.pending = self.pending, []
            try:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await conn.executemany(
                        "INSERT INTO ingest_events (ts, collector, symbol, kind, detail) "
                        "VALUES ($1, $2, $3, $4, $5::jsonb)",
                        batch,
                    )
                finally:
                    await conn.close()
                self.written += len(batch)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("ingest_events: %d rows not written yet (%s)", len(batch), exc)
                self.pending = batch + self.pending

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            await self.flush()


def ms_to_ts(ms: Iterable[int | None]) -> list[datetime | None]:
    return [None if t is None else datetime.fromtimestamp(t / 1000, tz=UTC) for t in ms]


async def merge_rows(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], records: list[tuple[Any, ...]]
) -> int:
    """COPY records into a temporary staging table, then INSERT ... ON CONFLICT DO NOTHING.

    For the tables the writer does not cover (book_depth_bands, futures_metrics, price_klines);
    the number of new rows.
    """
    if not records:
        return 0
    stage = f"stage_{table}"
    cols = ", ".join(columns)
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(stage, records=records, columns=list(columns))
        status = await conn.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"
        )
    return int(status.split()[-1])


def writer_class() -> Any:
    from microstructure.ingest.writer import Writer  # the project's writer pipeline

    return Writer


async def open_writer(settings: Settings, dsn: str) -> Any:
    writer = writer_class()(dsn, Path(settings.home) / "spill")
    await writer.start()
    return writer


# ================================================================ shared: combined streams


Handler = Callable[[str, Any, int], None]


async def combined_stream(
    ws_base: str,
    streams: Sequence[str],
    *,
    stop: asyncio.Event,
    name: str,
    health: Health,
    events: EventLog | None = None,
    collector: str = "",
    stale_timeout: float = 10.0,
    backoff_max: float = 5.0,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[tuple[str, Any, int]]:
    """(stream, data, recv_ms) of a combined-stream connection, reconnecting forever until `stop`.

    - no message for `stale_timeout` seconds: the connection is dropped and made again;
    - closed or failed connections come back with jittered exponential backoff (capped);
    - a message that is not JSON or not {"stream","data"} is counted, logged (the first ones with their
      text) and recorded in ingest_events; the stream goes on.
    """
    h = health.stream(name)
    url = ws_base.rstrip("/") + "/stream?streams=" + "/".join(streams)
    own = session is None
    sess = session or aiohttp.ClientSession()
    attempt = 0
    try:
        while not stop.is_set():
            try:
                async with sess.ws_connect(url, autoping=True, heartbeat=None, max_msg_size=1 << 22) as ws:
                    attempt = 0
                    while not stop.is_set():
                        recv = asyncio.ensure_future(ws.receive())
                        stopper = asyncio.ensure_future(stop.wait())
                        done, _ = await asyncio.wait(
                            {recv, stopper}, timeout=stale_timeout, return_when=asyncio.FIRST_COMPLETED
                        )
                        stopper.cancel()
                        if recv not in done:
                            recv.cancel()
                            with contextlib.suppress(asyncio.CancelledError, Exception):
                                await recv
                            if stop.is_set():
                                return
                            h.stale_reconnects += 1
                            log.warning("%s: no message for %.1f s; reconnecting", name, stale_timeout)
                            if events is not None:
                                events.record(
                                    collector, None, "reconnect", {"stream": name, "reason": "stale"}
                                )
                            break
                        msg = recv.result()
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            recv_ms = now_ms()
                            h.messages += 1
                            h.last_recv_ms = recv_ms
                            try:
                                obj = json.loads(msg.data)
                                stream_name, data = obj["stream"], obj["data"]
                                if not isinstance(stream_name, str) or not isinstance(data, dict):
                                    raise TypeError("stream/data of the wrong type")
                            except (ValueError, KeyError, TypeError) as exc:
                                note_malformed(h, events, collector, None, name, msg.data, exc)
                                continue
                            yield stream_name, data, recv_ms
                        elif msg.type in (
                            aiohttp.WSMsgType.CLOSE,
                            aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR,
                        ):
                            break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("%s: connection failed: %s", name, exc)
            if stop.is_set():
                return
            attempt += 1
            h.reconnects += 1
            delay = random.uniform(0.5, 1.0) * min(backoff_max, 0.1 * 2 ** min(attempt, 10))
            log.info("%s: reconnecting in %.2f s", name, delay)
            if events is not None:
                events.record(collector, None, "reconnect", {"stream": name, "attempt": attempt})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        if own:
            await sess.close()


def note_malformed(
    h: StreamHealth,
    events: EventLog | None,
    collector: str,
    symbol: str | None,
    name: str,
    text: Any,
    exc: BaseException,
) -> None:
    h.malformed += 1
    sample = text if isinstance(text, str) else json.dumps(text, default=str)
    if h.malformed <= MAX_LOGGED_MALFORMED:
        log.warning("%s: malformed message skipped (%s: %s): %.300s", name, type(exc).__name__, exc, sample)
    elif h.malformed == MAX_LOGGED_MALFORMED + 1:
        log.warning("%s: more malformed messages; counting without logging each", name)
    if events is not None and h.malformed <= 1000:
        events.record(
            collector,
            symbol,
            "malformed",
            {"stream": name, "error": f"{type(exc).__name__}: {exc}", "text": sample[:500]},
        )


async def run_stream(
    ws_base: str,
    streams: Sequence[str],
    handler: Handler,
    *,
    stop: asyncio.Event,
    name: str,
    health: Health,
    events: EventLog | None,
    collector: str,
    stale_timeout: float,
) -> None:
    """Feed every (stream, data, recv_ms) of a combined-stream connection to `handler`.

    A handler that raises ValueError/KeyError/TypeError marks the message malformed (counted, logged,
    recorded); anything else propagates.
    """
    h = health.stream(name)
    async for stream_name, data, recv_ms in combined_stream(
        ws_base,
        streams,
        stop=stop,
        name=name,
        health=health,
        events=events,
        collector=collector,
        stale_timeout=stale_timeout,
    ):
        try:
            handler(stream_name, data, recv_ms)
        except MALFORMED_ERRORS as exc:
            note_malformed(
                h, events, collector, data.get("s") if isinstance(data, dict) else None, name, data, exc
            )


MALFORMED_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError)


class SharedStreams:
    """One combined-stream connection for several collectors (collect all).

    Each collector registers its streams and handler instead of opening its own connection; messages
    are routed by stream name. Messages and malformed ones are counted under the owning collector's
    name (as with its own connection); reconnects under the connection's name `name`.
    """

    def __init__(self, ws_base: str, *, expected: int, health: Health, events: EventLog | None,
                 stale_timeout: float = 10.0, name: str = "streams") -> None:  # fmt: skip
        self.ws_base = ws_base
        self.expected = expected
        self.health = health
        self.events = events
        self.stale_timeout = stale_timeout
        self.name = name
        self.routes: dict[str, tuple[Handler, str]] = {}
        self.registered = 0
        self.ready = asyncio.Event()

    def register(self, streams: Sequence[str], handler: Handler, owner: str) -> None:
        for s in streams:
            self.routes[s] = (handler, owner)
        self.registered += 1
        if self.registered >= self.expected:
            self.ready.set()

    def dispatch(self, stream: str, data: Any, recv_ms: int) -> None:
        route = self.routes.get(stream)
        if route is None:
            return
        handler, owner = route
        h = self.health.stream(owner)
        h.messages += 1
        h.last_recv_ms = recv_ms
        try:
            handler(stream, data, recv_ms)
        except MALFORMED_ERRORS as exc:
            symbol = data.get("s") if isinstance(data, dict) else None
            note_malformed(h, self.events, owner, symbol, owner, data, exc)

    async def run(self, stop: asyncio.Event, wait_for_collectors: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), wait_for_collectors)
        if not self.routes:
            return
        async for stream_name, data, recv_ms in combined_stream(
            self.ws_base,
            list(self.routes),
            stop=stop,
            name=self.name,
            health=self.health,
            events=self.events,
            collector=self.name,
            stale_timeout=self.stale_timeout,
        ):
            self.dispatch(stream_name, data, recv_ms)


async def start_stream(
    settings: Settings,
    streams: Sequence[str],
    handler: Handler,
    *,
    shared: SharedStreams | None,
    stop: asyncio.Event,
    health: Health,
    events: EventLog | None,
    collector: str,
    stale_timeout: float,
) -> asyncio.Task[None] | None:
    """Register with the shared connection, or start this collector's own connection (a task)."""
    if shared is not None:
        shared.register(streams, handler, collector)
        return None
    return asyncio.create_task(
        run_stream(
            settings.ws_url,
            streams,
            handler,
            stop=stop,
            name=collector,
            health=health,
            events=events,
            collector=collector,
            stale_timeout=stale_timeout,
        )
    )


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when `stop` was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def stop_after(stop: asyncio.Event, live_seconds: float | None) -> asyncio.Task[None] | None:
    if live_seconds is None:
        return None

    async def later() -> None:
        await asyncio.sleep(live_seconds)
        stop.set()

    return asyncio.create_task(later())


# ================================================================ book snapshots


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _levels(v: Any) -> list[tuple[float, float]]:
    """The top 20 [price, qty] levels as floats (ValueError/TypeError when one does not parse)."""
    if not isinstance(v, list):
        raise TypeError(f"expected a list of [price, qty] levels, got {type(v).__name__}")
    return [(float(p), float(q)) for p, q in v[:LEVELS]]


@dataclass
class SnapshotRow:
    event_ms: int
    ts_ms: int
    first_update_id: int | None
    last_update_id: int
    prev_update_id: int | None
    bids: list[Any]  # [[price, qty], ...] strings or floats, best first
    asks: list[Any]
    recv_ms: int | None


def parse_depth_event(data: dict[str, Any], recv_ms: int | None) -> SnapshotRow:
    """A depthUpdate (partial book) message -> a row; TypeError/KeyError when malformed."""
    if data.get("e") != "depthUpdate":
        raise ValueError(f"expected e=depthUpdate, got {data.get('e')!r}")
    return SnapshotRow(
        event_ms=_int(data["E"]),
        ts_ms=_int(data["T"]),
        first_update_id=_int(data["U"]),
        last_update_id=_int(data["u"]),
        prev_update_id=_int(data["pu"]),
        bids=_levels(data["b"]),
        asks=_levels(data["a"]),
        recv_ms=recv_ms,
    )


def _list_column(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = ~np.isnan(px)
    offsets = np.zeros(len(px) + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    return offsets, present


def snapshots_table(
    rows: Sequence[SnapshotRow], source: str, values_of: Callable[..., dict[str, np.ndarray]]
) -> pa.Table:
    """Rows of one symbol (time order) -> a BOOK_SNAPSHOTS batch, levels and values for all at once.

    `values_of(bid_px, bid_qty, ask_px, ask_qty)` computes the per-snapshot values (carrying OFI).
    Raises ValueError when a price or quantity does not parse.
    """
    n = len(rows)
    bp, bq = pad_levels([r.bids for r in rows])
    ap, aq = pad_levels([r.asks for r in rows])
    values = values_of(bp, bq, ap, aq)
    cols: dict[str, pa.Array] = {
        "ts_ms": pa.array(np.fromiter((r.ts_ms for r in rows), np.int64, n)),
        "event_ms": pa.array(np.fromiter((r.event_ms for r in rows), np.int64, n)),
        "first_update_id": pa.array([r.first_update_id for r in rows], pa.int64()),
        "last_update_id": pa.array(np.fromiter((r.last_update_id for r in rows), np.int64, n)),
        "prev_update_id": pa.array([r.prev_update_id for r in rows], pa.int64()),
        "source": pa.array([source] * n, pa.string()),
    }
    for name, px, qty in (("bid", bp, bq), ("ask", ap, aq)):
        offsets, present = _list_column(px)
        off = pa.array(offsets, pa.int32())
        cols[f"{name}_px"] = pa.ListArray.from_arrays(off, pa.array(px[present]))
        cols[f"{name}_qty"] = pa.ListArray.from_arrays(off, pa.array(qty[present]))
    for c in VALUE_COLUMNS:
        cols[c] = pa.array(values[c], pa.float64(), from_pandas=True)  # NaN -> null
    cols["recv_ms"] = pa.array([r.recv_ms for r in rows], pa.int64())
    return pa.Table.from_arrays([cols[f.name] for f in BOOK_SNAPSHOTS], schema=BOOK_SNAPSHOTS)


@dataclass
class BookReport:
    symbols: list[str]
    source: str
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    resyncs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    malformed: int = 0
    reconnects: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return True

    def summary_lines(self) -> list[str]:
        out = [f"book snapshots ({self.source}) for {self.seconds:.1f} s:"]
        for s in self.symbols:
            extra = f", {self.resyncs.get(s, 0)} resyncs" if self.source == "diff" else ""
            out.append(f"  {s}: {self.rows.get(s, 0)} snapshots{extra}")
        out.append(f"  malformed messages: {self.malformed}; reconnects: {self.reconnects}")
        return out


class SnapshotSink:
    """Buffers snapshot rows per symbol; flush() turns each symbol's rows into one batch for the writer.

    Rows whose last update id is not above the symbol's previous one are dropped (duplicates from a
    reconnect or overlapping connections).
    """

    def __init__(
        self,
        writer: Any,
        source: str,
        report: BookReport,
        health: Health,
        events: EventLog | None,
        collector: str,
    ) -> None:
        self.writer = writer
        self.source = source
        self.report = report
        self.health = health
        self.events = events
        self.collector = collector
        self.values = BookValues()
        self.pending: dict[str, list[SnapshotRow]] = defaultdict(list)
        self.last_u: dict[str, int] = {}

    def add(self, symbol: str, row: SnapshotRow) -> bool:
        last = self.last_u.get(symbol)
        if last is not None and row.last_update_id <= last:
            self.health.add("book_duplicates_dropped")
            return False
        self.last_u[symbol] = row.last_update_id
        self.pending[symbol].append(row)
        return True

    def _batch(self, symbol: str, rows: list[SnapshotRow]) -> pa.Table | None:
        def values_of(
            bp: np.ndarray, bq: np.ndarray, ap: np.ndarray, aq: np.ndarray
        ) -> dict[str, np.ndarray]:
            return self.values.compute(symbol, bp, bq, ap, aq)

        try:
            return snapshots_table(rows, self.source, values_of)
        except ValueError:
            pass  # a level that does not parse: find it, drop that row, keep the others
        good = []
        for r in rows:
            try:
                pad_levels([r.bids])
                pad_levels([r.asks])
                good.append(r)
            except ValueError as exc:
                note_malformed(
                    self.health.stream(f"{self.collector}:{symbol}"),
                    self.events,
                    self.collector,
                    symbol,
                    self.collector,
                    {"b": r.bids, "a": r.asks, "u": r.last_update_id},
                    exc,
                )
        return snapshots_table(good, self.source, values_of) if good else None

    async def flush(self) -> int:
        n = 0
        pending, self.pending = self.pending, defaultdict(list)
        for symbol, rows in pending.items():
            if not rows:
                continue
            batch = self._batch(symbol, rows)
            if batch is None or batch.num_rows == 0:
                continue
            await self.writer.submit("book_snapshots", symbol, batch)
            self.report.rows[symbol] += batch.num_rows
            n += batch.num_rows
        return n


async def collect_book_live(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    *,
    source: str = "depth20",
    live_seconds: float | None = None,
    writer: Any = None,
    stop_event: asyncio.Event | None = None,
    health: Health | None = None,
    events: EventLog | None = None,
    rest: Any = None,
    flush_interval: float = 1.0,
    stale_timeout: float = 10.0,
    diff_speed: str = "100ms",
    sample_ms: int = 500,
    message_filter: Callable[[str, dict[str, Any]], bool] | None = None,
    shared_streams: SharedStreams | None = None,
) -> BookReport:
    """Collect live top-20 book snapshots of `symbols` until `live_seconds` pass or `stop_event` is set.

    source 'depth20': `<s>@depth20@500ms`; 'diff': local books from `<s>@depth@<diff_speed>` sampled
    every `sample_ms`. `writer`/`stop_event`/`health`/`events` are shared when given (collect all);
    otherwise this function makes its own and closes them. `message_filter(stream, data)` returning
    False drops a message before it is handled (tests use it to inject sequence breaks).
    """
    if source not in ("depth20", "diff"):
        raise ValueError(f"source: expected depth20 or diff, got {source!r}")
    symbols = [s.upper() for s in symbols]
    collector = f"book_{source}"
    stop = stop_event or asyncio.Event()
    health = health or Health()
    own_events = events is None
    events = events or EventLog(dsn)
    own_writer = writer is None
    if own_writer:
        writer = await open_writer(settings, dsn)
    report = BookReport(list(symbols), source)
    sink = SnapshotSink(writer, source, report, health, events, collector)
    started = time.monotonic()
    timer = stop_after(stop, live_seconds)
    tasks: list[asyncio.Task[Any]] = []
    own_rest = None
    books = None
    try:
        if source == "depth20":
            wanted = {f"{s.lower()}@depth20@500ms": s for s in symbols}

            def handle(stream: str, data: dict[str, Any], recv_ms: int) -> None:
                symbol = wanted.get(stream)
                if symbol is None:
                    return
                if message_filter is not None and not message_filter(stream, data):
                    return
                row = parse_depth_event(data, recv_ms)
                if data.get("s") not in (None, symbol):
                    raise ValueError(f"symbol {data.get('s')!r} on stream {stream}")
                sink.add(symbol, row)

            streams = list(wanted)
        else:
            from microstructure.ingest.binance_rest import BinanceRest
            from microstructure.ingest.orderbook import DiffBooks

            if rest is None:
                own_rest = rest = BinanceRest(settings.rest_url)
                await rest.open()
            books = DiffBooks(symbols, rest, sink=sink, events=events, health=health, collector=collector)
            wanted = {f"{s.lower()}@depth@{diff_speed}": s for s in symbols}

            def handle(stream: str, data: dict[str, Any], recv_ms: int) -> None:
                symbol = wanted.get(stream)
                if symbol is None:
                    return
                if message_filter is not None and not message_filter(stream, data):
                    return
                books.on_event(symbol, data, recv_ms)

            streams = list(wanted)
            tasks.append(asyncio.create_task(books.sampler(stop, sample_ms)))
        stream_task = await start_stream(
            settings,
            streams,
            handle,
            shared=shared_streams,
            stop=stop,
            health=health,
            events=events,
            collector=collector,
            stale_timeout=stale_timeout,
        )
        if stream_task is not None:
            tasks.append(stream_task)
        if own_events:
            tasks.append(asyncio.create_task(events.run(stop)))
        while not await sleep_or_stop(stop, flush_interval):
            await sink.flush()
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if books is not None:
            await books.close()
        await sink.flush()
        if own_writer:
            await writer.close()
        else:
            await writer.flush()
        if own_events:
            await events.flush()
        if own_rest is not None:
            await own_rest.close()
    hs = health.stream(collector)
    report.malformed = hs.malformed
    conn = health.stream(shared_streams.name) if shared_streams is not None else hs
    report.reconnects = conn.reconnects + conn.stale_reconnects
    if books is not None:
        report.resyncs.update(books.resyncs)
    report.seconds = time.monotonic() - started
    return report


# ================================================================ historical: bookDepth archives


BOOK_DEPTH_HELP = (
    "Historical mode loads data.binance.vision daily bookDepth archives into book_depth_bands: for each "
    "snapshot (about every 30 s) the cumulative depth and notional within +-1, 2, 3, 4 and 5 % of the mid "
    "price. This is NOT a 20-level order book and does not fill book_snapshots; 20-level books exist only "
    "from live collection."
)


@dataclass
class HistoricalReport:
    what: str
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    days_loaded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    missing: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    malformed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary_lines(self) -> list[str]:
        out = [f"{self.what}:"]
        for s in sorted(set(self.rows) | set(self.days_loaded)):
            out.append(f"  {s}: {self.rows.get(s, 0)} new rows from {self.days_loaded.get(s, 0)} archives")
        if self.missing:
            out.append(
                f"  archives not published: {len(self.missing)} ({', '.join(self.missing[:5])}{' ...' if len(self.missing) > 5 else ''})"
            )
        if self.refused:
            out.append(f"  refused (checksum mismatch): {', '.join(self.refused)}")
        if self.malformed:
            out.append(f"  malformed rows skipped: {self.malformed}")
        out.extend("  " + n for n in self.notes)
        return out


def day_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def ms_of_day(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


async def resolve_days(
    settings: Settings, start: date | None, end: date | None, days: int | None
) -> tuple[date, date, int]:
    """[start, end] of complete UTC days, and the exchange's now in ms (asked from the server)."""
    from microstructure.ingest.binance_rest import BinanceRest

    async with BinanceRest(settings.rest_url) as rest:
        server_ms = await rest.server_time()
    today = datetime.fromtimestamp(server_ms / 1000, tz=UTC).date()
    if days is not None:
        return today - timedelta(days=days), today - timedelta(days=1), server_ms
    assert start is not None
    last = min(end or today - timedelta(days=1), today - timedelta(days=1))
    return start, last, server_ms


async def load_archive_table(
    session: aiohttp.ClientSession,
    archive_url: str,
    kind: str,
    symbol: str,
    period: str,
    when: date | str,
    report: HistoricalReport,
    events: EventLog,
    collector: str,
) -> Any:
    """Download, verify and parse one archive (archives.ParsedCsv); None (recorded) when missing or refused."""
    from microstructure.ingest import archives

    url = archives.archive_url(archive_url, kind, symbol, period, when)
    try:
        dl = await archives.download_archive(session, url)
    except archives.ArchiveMissing:
        report.missing.append(url.rsplit("/", 1)[-1])
        events.record(collector, symbol, "archive_missing", {"url": url})
        return None
    except archives.ChecksumMismatch as exc:
        report.refused.append(url.rsplit("/", 1)[-1])
        events.record(
            collector,
            symbol,
            "checksum_mismatch",
            {"url": url, "expected": exc.expected, "actual": exc.actual},
        )
        log.error("%s", exc)
        return None
    try:
        parsed = await asyncio.to_thread(archives.parse_archive_zip, kind, dl.path, where=url)
    finally:
        dl.discard()
    if parsed.malformed:
        report.malformed += parsed.malformed
        events.record(
            collector,
            symbol,
            "malformed",
            {"url": url, "rows": parsed.malformed, "sample": parsed.malformed_rows[:5]},
        )
    return parsed


async def collect_book_historical(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    start: date | None = None,
    end: date | None = None,
    *,
    days: int | None = None,
) -> HistoricalReport:
    """Daily bookDepth archives of [start, end] (or the last `days` complete days) into book_depth_bands.

    Not a 20-level book: cumulative depth within +-1..5 % of mid, about every 30 s (see BOOK_DEPTH_HELP).
    Idempotent (ON CONFLICT DO NOTHING on (symbol, ts, percentage)).
    """
    collector = "book_depth_historical"
    first, last, _ = await resolve_days(settings, start, end, days)
    report = HistoricalReport("bookDepth archives -> book_depth_bands")
    events = EventLog(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        async with aiohttp.ClientSession() as session:
            for symbol in symbols:
                for d in day_range(first, last):
                    parsed = await load_archive_table(
                        session,
                        settings.archive_url,
                        "bookDepth",
                        symbol,
                        "daily",
                        d,
                        report,
                        events,
                        collector,
                    )
                    if parsed is None:
                        continue
                    table = parsed.table
                    ts = table.column("timestamp").to_numpy()
                    records = list(
                        zip(
                            [symbol] * table.num_rows,
                            ms_to_ts(ts.tolist()),
                            table.column("percentage").to_pylist(),
                            table.column("depth").to_pylist(),
                            table.column("notional").to_pylist(),
                            strict=True,
                        )
                    )
                    report.rows[symbol] += await merge_rows(
                        conn, "book_depth_bands", ("symbol", "ts", "percentage", "depth", "notional"), records
                    )
                    report.days_loaded[symbol] += 1
    finally:
        await conn.close()
        await events.flush()
    return report
