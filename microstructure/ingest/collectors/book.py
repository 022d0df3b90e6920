"""Order books: live top-20 snapshots into book_snapshots, daily bookDepth archives into book_depth_bands.

Live (`collect_book_live`):
- source 'depth20' (default): the `<s>@depth20@500ms` stream; one row per message (levels as sent,
  U/u/pu, E/T, local receive time) plus the per-snapshot values of book_values.py;
- source 'diff': a local order book per symbol from `<s>@depth@100ms` by Binance's procedure
  (orderbook.py), its top 20 (or `depth_levels`, up to 1000) sampled at each 500 ms boundary of the
  exchange's clock (the last update with T before it), so redundant collectors store equal rows;
  the per-snapshot values always use the top 20, as FEATURES.md defines them.
Messages are buffered per symbol and turned into one Arrow batch per symbol about every second
(levels parsed and values computed for the whole batch at once), then handed to the writer.

Historical (`collect_book_historical`): data.binance.vision daily bookDepth archives
(timestamp,percentage,depth,notional). These are NOT a 20-level book: each row is the cumulative
depth (and notional) within +-1..5 % of the mid price, one set about every 30 s. They go to
book_depth_bands, never to book_snapshots.

"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pyarrow as pa

from microstructure.config import Settings
from microstructure.ingest.binance.streams import SharedStreams
from microstructure.ingest.collectors.archive_days import (
    HistoricalReport,
    day_range,
    load_archive_table,
    resolve_days,
)
from microstructure.ingest.collectors.book_values import LEVELS, VALUE_COLUMNS, BookValues, pad_levels
from microstructure.ingest.collectors.progress import DayProgress
from microstructure.ingest.collectors.runtime import start_stream, stop_after
from microstructure.ingest.health import EventLog, Health, note_malformed
from microstructure.ingest.records import BOOK_DEPTH_BANDS, BOOK_SNAPSHOTS, SnapshotRow
from microstructure.ingest.sink.writer import merge_table, open_writer, writer_problems
from microstructure.waiting import sleep_or_stop

DIFF_MAX_LEVELS = 1000  # --depth-levels: at most the levels of the REST snapshot (/fapi/v1/depth?limit=1000)


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
    rows: Sequence[SnapshotRow],
    source: str,
    values_of: Callable[..., dict[str, np.ndarray]],
    levels: int = LEVELS,
) -> pa.Table:
    """Rows of one symbol (time order) -> a BOOK_SNAPSHOTS batch, levels and values for all at once.

    Up to `levels` levels a side are stored; `values_of(bid_px, bid_qty, ask_px, ask_qty)` computes the
    per-snapshot values (carrying OFI) from the top 20 only. Raises ValueError when a price or
    quantity does not parse.
    """
    n = len(rows)
    bp, bq = pad_levels([r.bids for r in rows], levels)
    ap, aq = pad_levels([r.asks for r in rows], levels)
    values = values_of(bp[:, :LEVELS], bq[:, :LEVELS], ap[:, :LEVELS], aq[:, :LEVELS])
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
    batches_left: int = 0  # in spill files at exit (own writer only; collect all checks its own)
    batches_rejected: int = 0  # refused by the database (own writer only)
    batches_dropped: int = 0  # spill folder full while the database was away (own writer only)

    def problems(self) -> list[str]:
        """Why this run did not do its job: a symbol with no snapshot stored, batches not in the database."""
        out = [
            f"no book snapshot stored for {s} in {self.seconds:.1f} s"
            for s in self.symbols
            if not self.rows.get(s)
        ]
        return out + writer_problems(self.batches_left, self.batches_rejected, self.batches_dropped)

    @property
    def ok(self) -> bool:
        return not self.problems()

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
        levels: int = LEVELS,
    ) -> None:
        self.writer = writer
        self.source = source
        self.levels = levels
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
            return snapshots_table(rows, self.source, values_of, self.levels)
        except ValueError:
            pass  # a level that does not parse: find it, drop that row, keep the others
        good = []
        for r in rows:
            try:
                pad_levels([r.bids], self.levels)
                pad_levels([r.asks], self.levels)
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
        return snapshots_table(good, self.source, values_of, self.levels) if good else None

    async def flush(self) -> int:
        n = 0
        pending, self.pending = self.pending, defaultdict(list)
        batches = []
        for symbol, rows in pending.items():
            if not rows:
                continue
            batch = self._batch(symbol, rows)
            if batch is None or batch.num_rows == 0:
                continue
            batches.append((symbol, batch))
            self.report.rows[symbol] += batch.num_rows
            n += batch.num_rows
        self.writer.submit_many("book_snapshots", batches)  # one item (one transaction) for every symbol
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
    depth_levels: int = LEVELS,
) -> BookReport:
    """Collect live top-20 book snapshots of `symbols` until `live_seconds` pass or `stop_event` is set.

    source 'depth20': `<s>@depth20@500ms`; 'diff': local books from `<s>@depth@<diff_speed>` sampled
    at every `sample_ms` boundary of the exchange's time T, storing the top `depth_levels`
    (20..1000; the values use the top 20).
    `writer`/`stop_event`/`health`/`events` are shared when given (collect all); otherwise this
    function makes its own and closes them. `message_filter(stream, data)` returning
    False drops a message before it is handled (tests use it to inject sequence breaks).
    """
    if source not in ("depth20", "diff"):
        raise ValueError(f"source: expected depth20 or diff, got {source!r}")
    if depth_levels != LEVELS and source != "diff":
        raise ValueError("depth_levels: only the diff source keeps more than 20 levels")
    if not LEVELS <= depth_levels <= DIFF_MAX_LEVELS:
        raise ValueError(f"depth_levels: expected {LEVELS}..{DIFF_MAX_LEVELS}, got {depth_levels}")
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
    sink = SnapshotSink(writer, source, report, health, events, collector, depth_levels)
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
            from microstructure.ingest.binance.rest import BinanceRest
            from microstructure.ingest.collectors.orderbook import DiffBooks

            if rest is None:
                own_rest = rest = BinanceRest(settings.rest_url)
                await rest.open()
            books = DiffBooks(
                symbols,
                rest,
                sink=sink,
                events=events,
                health=health,
                collector=collector,
                levels=depth_levels,
                sample_ms=sample_ms,
            )
            wanted = {f"{s.lower()}@depth@{diff_speed}": s for s in symbols}

            def handle(stream: str, data: dict[str, Any], recv_ms: int) -> None:
                symbol = wanted.get(stream)
                if symbol is None:
                    return
                if message_filter is not None and not message_filter(stream, data):
                    return
                books.on_event(symbol, data, recv_ms)

            streams = list(wanted)
        conns, stream_task = start_stream(
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
            report.batches_left = writer.queue_depth
            report.batches_rejected = writer.stats.batches_rejected
            report.batches_dropped = writer.stats.batches_dropped
        else:  # the owner closes it; bounded, so that a stop while the database is away still stops
            await writer.flush(getattr(writer, "close_timeout", None), give_up_when_down=True)
        if own_events:
            await events.flush()
        if own_rest is not None:
            await own_rest.close()
    hs = health.stream(collector)
    totals = conns.totals()  # of the shared connections, or of this collector's own
    rows_bad = sum(v.malformed for k, v in health.streams.items() if k.startswith(f"{collector}:"))  # _batch
    report.malformed = hs.malformed + rows_bad + (totals.malformed if shared_streams is None else 0)
    report.reconnects = totals.reconnects  # a stale reconnect is counted there too
    if books is not None:
        report.resyncs.update(books.resyncs)
    report.seconds = time.monotonic() - started
    return report


# ================================================================ historical: bookDepth archives


BOOK_DEPTH_HELP = (
    "Historical mode loads data.binance.vision daily bookDepth archives into book_depth_bands: for each "
    "snapshot (about every 30 s) the cumulative depth and notional within +-1, 2, 3, 4 and 5 % of the mid "
    "price (and +-0.2 % in 2026 files). This is NOT a 20-level order book and does not fill book_snapshots; "
    "20-level books exist only from live collection. The bands feed the book-depth band features "
    "(depth_imbalance_<b>pct, ...; docs/FEATURES.md), refreshed before the report."
)


async def collect_book_historical(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    start: date | None = None,
    end: date | None = None,
    *,
    days: int | None = None,
    progress: bool = True,
) -> HistoricalReport:
    """Daily bookDepth archives of [start, end] (or the last `days` complete days) into book_depth_bands.
    `progress`: a bar per symbol on a terminal, else a heartbeat line a minute (progress.py).

    Not a 20-level book: cumulative depth within +-1..5 % of mid, about every 30 s (see BOOK_DEPTH_HELP).
    Idempotent (ON CONFLICT DO NOTHING on (symbol, ts, percentage)).
    """
    collector = "book_depth_historical"
    first, last, _ = await resolve_days(settings, start, end, days, symbols)
    report = HistoricalReport("bookDepth archives -> book_depth_bands")
    events = EventLog(dsn)
    conn = await asyncpg.connect(dsn)
    prog = DayProgress("bookDepth historical", bar=progress and sys.stderr.isatty()).start()
    try:
        async with aiohttp.ClientSession() as session:
            for symbol in symbols:
                prog.add(symbol, len(day_range(first, last)))
                for d in day_range(first, last):
                    prog.update(symbol, note=f"{d} archive")
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
                        prog.update(symbol, days=1, label=f"{d} not loaded (see the report)")
                        continue
                    table = parsed.table
                    bands = pa.table(
                        {
                            "symbol": pa.array([symbol] * table.num_rows, pa.string()),
                            "ts": table.column("timestamp"),
                            "percentage": table.column("percentage"),
                            "depth": table.column("depth"),
                            "notional": table.column("notional"),
                        }
                    )
                    report.rows[symbol] += await merge_table(
                        conn, "book_depth_bands", bands, BOOK_DEPTH_BANDS
                    )
                    report.days_loaded[symbol] += 1
                    prog.update(symbol, days=1, rows=report.rows[symbol], label=f"{d} archive")
    finally:
        prog.stop()
        await conn.close()
        await events.flush()
    return report
