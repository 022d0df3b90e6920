"""Market data: mark price, funding, open interest and liquidations, live and historical.

Live (`collect_market_live`), one combined-stream connection plus REST polls:
- `<s>@markPrice@1s`, or from MARK_ALL_FROM symbols on the all-market `!markPrice@arr@1s` filtered to
  the symbols (`mark_stream`, as for liquidations) -> mark_prices (mark p, index i, estimated settle P,
  funding rate r, next funding T);
  a dated contract's sentinels are NULL: T 0 (no next funding, so no funding rate) and P "0.00000000";
- settled funding rates -> funding_rates: /fapi/v1/fundingRate is polled at start, whenever a
  symbol's next funding time moves on (a settlement just happened; polled until the new row is
  there) and on an interval;
- open interest -> open_interest (source 'rest'): /fapi/v1/openInterest every `oi_interval` s; at the
  start, /futures/data/openInterestHist (5m, source 'hist') fills the time since each symbol's last
  stored open interest (none stored: since today's UTC midnight; at most the 30 days it serves), so
  the bars between the last metrics archive (yesterday 23:55) and the first poll have theirs;
- liquidations -> liquidations: `<s>@forceOrder` per symbol, or the all-market `!forceOrder@arr`
  filtered to the symbols (`liquidations_stream`: 'per-symbol', 'all', or 'auto' = all from
  FORCE_ALL_FROM symbols on). The exchange samples them (at most the latest order per symbol per second), so
  counts and volumes are lower bounds.
A REST poll that fails (after the client's own retries) is retried with backoff and each miss is
recorded in ingest_events (kind 'poll_miss'). A stream silent for `stale_timeout` s is reconnected.

Historical (`collect_market_historical`):
- settled funding: monthly fundingRate archives (calc_time,funding_interval_hours,last_funding_rate)
  and REST /fapi/v1/fundingRate, paginated;
- open interest: daily metrics archives (5-minute) into futures_metrics AND open_interest (source
  'metrics'); /futures/data/openInterestHist (5m, source 'hist', the last 30 days only) for the days
  of the range without a metrics archive and, when the range ends yesterday (the latest day an
  archive can exist for), for the hours from the last archived metrics row up to now: today's open
  interest, which no archive has yet;
- 1m mark / index / premium-index klines from their daily archives into price_klines.
Archive CSVs have a header line only from 2022-08-11; it is detected from the first line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from microstructure.config import Settings
from microstructure.ingest.binance.streams import SharedStreams
from microstructure.ingest.collectors.archive_days import (
    DAY_MS,
    HistoricalReport,
    day_range,
    load_archive_table,
    ms_of_day,
    resolve_days,
)
from microstructure.ingest.collectors.progress import DayProgress
from microstructure.ingest.collectors.runtime import note_bad_reply, start_stream, stop_after
from microstructure.ingest.health import EventLog, Health, now_ms
from microstructure.ingest.records import (
    FUNDING_RATES,
    FUTURES_METRICS,
    LIQUIDATIONS,
    MARK_PRICES,
    OPEN_INTEREST,
    PRICE_KLINES,
)
from microstructure.ingest.sink.stored import last_open_interest_ms
from microstructure.ingest.sink.writer import merge_table, open_writer, writer_problems
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

COLLECTOR = "market"
# liquidations 'auto': from this many symbols on, !forceOrder@arr instead of one stream per symbol
FORCE_ALL_FROM = 20
LIQUIDATION_STREAMS = ("auto", "per-symbol", "all")
# mark prices 'auto': from this many symbols on, one !markPrice@arr@1s (every symbol's mark price in
# one message a second) instead of one <s>@markPrice@1s per symbol
MARK_ALL_FROM = 20
# REST polls (open interest, funding) of many symbols in flight at once at most: 300 symbols' polls
# go a few at a time through the weight scheduler instead of 300 sockets opened in one burst
POLL_CONCURRENCY = 8
HIST_DAYS = 30  # /futures/data/openInterestHist serves the last 30 days only
OI_HIST_LIMIT = 500  # rows per openInterestHist page
OI_PERIOD_MS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000,
                "4h": 14_400_000, "6h": 21_600_000, "12h": 43_200_000, "1d": 86_400_000}  # fmt: skip
KLINE_KINDS = {"markPriceKlines": "mark", "indexPriceKlines": "index", "premiumIndexKlines": "premium"}


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _opt_num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    return _num(v)


def _opt_price(v: Any) -> float | None:
    """A price where 0 means "not applicable" (estimatedSettlePrice "0.00000000" of a dated contract)."""
    x = _opt_num(v)
    return None if x == 0.0 else x


def _opt_time(v: Any) -> int | None:
    """An epoch time where 0 means "none" (nextFundingTime 0: a contract without funding)."""
    if v is None:
        return None
    t = _int(v)
    return None if t == 0 else t


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


# ---------------------------------------------------------------- batches


def mark_prices_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """(E, p, i, P, r, T, recv_ms) rows -> MARK_PRICES."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    return pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.int64()),
            pa.array(cols[1], pa.float64()),
            pa.array(cols[2], pa.float64()),
            pa.array(cols[3], pa.float64()),
            pa.array(cols[4], pa.float64()),
            pa.array(cols[5], pa.int64()),
            pa.array(cols[6], pa.int64()),
        ],
        schema=MARK_PRICES,
    )


def liquidations_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(LIQUIDATIONS)
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(cols, LIQUIDATIONS, strict=True)], schema=LIQUIDATIONS
    )


def funding_table(rows: list[tuple[int, float, float | None, int | None]]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [()] * 4
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(cols, FUNDING_RATES, strict=True)], schema=FUNDING_RATES
    )


def open_interest_table(ts: Any, oi: Any, value: Any, source: str, recv_ms: int | None = None) -> pa.Table:
    """An OPEN_INTEREST batch; `recv_ms` (one receive time for every row) only for a live poll."""
    ts = np.asarray(ts, dtype=np.int64)
    return pa.Table.from_arrays(
        [
            pa.array(ts),
            pa.array(np.asarray(oi, dtype=np.float64)),
            pa.array(value, pa.float64(), from_pandas=True)
            if value is not None
            else pa.nulls(len(ts), pa.float64()),
            pa.array([source] * len(ts), pa.string()),
            pa.array([recv_ms] * len(ts), pa.int64()),
        ],
        schema=OPEN_INTEREST,
    )


def oi_hist_table(page: list[dict[str, Any]]) -> pa.Table:
    """openInterestHist rows (decode_oi_hist_rows checked them) -> an OPEN_INTEREST batch, source 'hist'."""
    return open_interest_table(
        [int(r["timestamp"]) for r in page],
        [float(r["sumOpenInterest"]) for r in page],
        [_opt_num(r.get("sumOpenInterestValue")) for r in page],
        "hist",
    )


async def fill_oi_hist(fetch: Any, submit: Any, lo: int, hi: int, period_ms: int = 300_000) -> int:
    """openInterestHist over [lo, hi) in windows of OI_HIST_LIMIT periods: `fetch(start_ms, end_ms)`
    gives a window's rows (None: given up, the rest is left), `submit(table)` hands them to the
    writer; the rows handed over. A window never holds more rows than a page, so which end of an
    over-long window the exchange would favour does not matter, and an empty window (before a
    listing) does not end the fill. Rows already stored are kept as they are (the writer's merge): a
    rerun adds nothing it already has."""
    n = 0
    cursor = lo
    while cursor < hi:
        end = min(hi, cursor + OI_HIST_LIMIT * period_ms)
        page = await fetch(cursor, end - 1)
        if page is None:
            break
        if page:
            await submit(oi_hist_table(page))
            n += len(page)
        cursor = end
    return n


def funding_rows_from_rest(rows: list[dict[str, Any]]) -> list[tuple[int, float, float | None, int | None]]:
    """Rows of /fapi/v1/fundingRate. REST does not say the funding interval; for each settlement
    after the first of a page it is the whole hours since the previous one (8, or 4/1 for symbols
    Binance moved to shorter intervals), as the archives' funding_interval_hours."""
    if not isinstance(rows, list):
        raise TypeError(f"expected a list of funding rows, got {type(rows).__name__}")
    out: list[tuple[int, float, float | None, int | None]] = []
    prev: int | None = None
    for r in sorted(rows, key=lambda r: int(r["fundingTime"])):
        t = int(r["fundingTime"])
        hours = round((t - prev) / 3_600_000) if prev is not None else None
        out.append((t, float(r["fundingRate"]), _opt_num(r.get("markPrice")), hours if hours else None))
        prev = t
    return out


# ---------------------------------------------------------------- live


async def stored_oi_times(dsn: str, symbols: Sequence[str]) -> dict[str, int | None]:
    """Each symbol's last stored open-interest time (ms); {} when the database cannot be read now
    (the fill then starts at today's midnight: rows already stored are kept as they are)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5.0)
        try:
            return await last_open_interest_ms(conn, symbols)
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("stored open interest not readable (%s): filling today's from midnight", exc)
        return {}


@dataclass
class MarketReport:
    symbols: list[str]
    mark_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    liquidation_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    funding_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    oi_polls: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # successful polls = rows
    oi_filled: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # openInterestHist rows
    poll_misses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    oi_failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # polls given up
    funding_polls: int = 0
    malformed: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    batches_left: int = 0  # in spill files at exit (own writer only; collect all checks its own)
    batches_rejected: int = 0  # refused by the database (own writer only)
    batches_dropped: int = 0  # spill folder full while the database was away (own writer only)

    def problems(self) -> list[str]:
        """Why this run did not do its job: a symbol without a single mark price stored, or whose every
        open-interest poll failed; batches not in the database. (No funding settlement or liquidation
        in a run is normal.)"""
        out = []
        for s in self.symbols:
            if not self.mark_rows.get(s):
                out.append(f"no mark price stored for {s} in {self.seconds:.1f} s")
            if not self.oi_polls.get(s) and self.oi_failed.get(s):
                out.append(f"every open-interest poll of {s} failed ({self.poll_misses.get(s, 0)} misses)")
        return out + writer_problems(self.batches_left, self.batches_rejected, self.batches_dropped)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary_lines(self) -> list[str]:
        out = [f"market data for {self.seconds:.1f} s:"]
        for s in self.symbols:
            out.append(
                f"  {s}: {self.mark_rows.get(s, 0)} mark prices, {self.funding_rows.get(s, 0)} funding rates, "
                f"{self.oi_polls.get(s, 0)} open-interest polls ({self.poll_misses.get(s, 0)} missed), "
                f"{self.oi_filled.get(s, 0)} open-interest rows filled from openInterestHist, "
                f"{self.liquidation_rows.get(s, 0)} liquidations (sampled by the exchange: a lower bound)"
            )
        out.append(f"  malformed messages: {self.malformed}; reconnects: {self.reconnects}")
        return out


def check_stream_modes(liquidations_stream: str, mark_stream: str) -> None:
    """Each of 'per-symbol', 'all' or 'auto' (LIQUIDATION_STREAMS), else one ValueError naming it."""
    for what, value in (("liquidations_stream", liquidations_stream), ("mark_stream", mark_stream)):
        if value not in LIQUIDATION_STREAMS:
            raise ValueError(f"{what}: expected one of {LIQUIDATION_STREAMS}, got {value!r}")


class MarketLive:
    """State and tasks of the live market-data collector (shared writer, health and events)."""

    def __init__(
        self,
        symbols: Sequence[str],
        writer: Any,
        rest: Any,
        health: Health,
        events: EventLog,
        report: MarketReport,
        *,
        oi_interval: float,
        funding_interval: float,
        poll_retries: int = 3,
        poll_backoff: float = 1.0,
        liquidations_stream: str = "auto",
        mark_stream: str = "auto",
    ) -> None:
        check_stream_modes(liquidations_stream, mark_stream)
        self.liquidations_stream = liquidations_stream
        self.mark_stream = mark_stream
        self.symbols = list(symbols)
        self.wanted = set(self.symbols)
        self.writer = writer
        self.rest = rest
        self.health = health
        self.events = events
        self.report = report
        self.oi_interval = oi_interval
        self.funding_interval = funding_interval
        self.poll_retries = poll_retries
        self.poll_backoff = poll_backoff
        self.marks: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.liqs: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.next_funding: dict[str, int] = {}
        self.funding_due: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.funding_seen: dict[str, set[int]] = defaultdict(set)
        self.last_mark_E: dict[str, int] = {}
        self._in_flight = asyncio.Semaphore(POLL_CONCURRENCY)

    # ---- streams
    def streams(self) -> list[str]:
        mode = self.mark_stream
        if mode == "all" or (mode == "auto" and len(self.symbols) >= MARK_ALL_FROM):
            out = ["!markPrice@arr@1s"]  # every symbol's mark price; on_message keeps ours
        else:
            out = [f"{s.lower()}@markPrice@1s" for s in self.symbols]
        mode = self.liquidations_stream
        if mode == "all" or (mode == "auto" and len(self.symbols) >= FORCE_ALL_FROM):
            out.append("!forceOrder@arr")  # every symbol's liquidations; on_message keeps ours
        else:
            out += [f"{s.lower()}@forceOrder" for s in self.symbols]
        return out

    def on_message(self, stream: str, data: dict[str, Any] | list[Any], recv_ms: int) -> None:
        if isinstance(data, list):  # !markPrice@arr@1s: one markPriceUpdate per symbol
            for item in data:
                if not isinstance(item, dict):
                    raise TypeError(f"{stream}: an item is not an object")
                self.on_message(stream, item, recv_ms)
            return
        e = data.get("e")
        if e == "markPriceUpdate":
            sym = _str(data["s"])
            if sym not in self.wanted:
                return
            E = _int(data["E"])
            # Sentinels are NULL, not values: a dated contract sends T 0 (no next funding) and P
            # "0.00000000" (no settlement price yet); without a next funding there is no funding
            # rate either, whatever r says. Keys Binance adds over time (ap, st, ...) are ignored.
            next_funding = _opt_time(data.get("T"))
            row = (
                E,
                _num(data["p"]),
                _opt_num(data.get("i")),
                _opt_price(data.get("P")),
                _opt_num(data.get("r")) if next_funding is not None else None,
                next_funding,
                recv_ms,
            )
            if self.last_mark_E.get(sym, -1) >= E:
                return  # a repeat (reconnect overlap)
            self.last_mark_E[sym] = E
            self.marks[sym].append(row)
            T = row[5]
            if T is not None:
                prev = self.next_funding.get(sym)
                if prev is not None and prev < T:
                    self.funding_due.put_nowait((sym, prev))  # a settlement at `prev` just happened
                self.next_funding[sym] = T
        elif e == "forceOrder":
            o = data["o"]
            if not isinstance(o, dict):
                raise TypeError("forceOrder: o is not an object")
            sym = _str(o["s"])
            if sym not in self.wanted:
                return
            side = _str(o["S"])
            if side not in ("BUY", "SELL"):
                raise ValueError(f"forceOrder side {side!r}")
            self.liqs[sym].append(
                (
                    _int(data["E"]),
                    _int(o["T"]),
                    side,
                    o.get("o"),
                    o.get("f"),
                    _num(o["q"]),
                    _num(o["p"]),
                    _opt_num(o.get("ap")),
                    o.get("X"),
                    _opt_num(o.get("l")),
                    _opt_num(o.get("z")),
                    recv_ms,
                )
            )
        else:
            raise ValueError(f"unexpected event type {e!r} on {stream}")

    async def flush(self) -> None:
        marks, self.marks = self.marks, defaultdict(list)
        liqs, self.liqs = self.liqs, defaultdict(list)
        # one item (one transaction) per table for every symbol of the flush
        self.writer.submit_many(
            "mark_prices", [(sym, mark_prices_table(rows)) for sym, rows in marks.items() if rows]
        )
        self.writer.submit_many(
            "liquidations", [(sym, liquidations_table(rows)) for sym, rows in liqs.items() if rows]
        )
        for sym, rows in marks.items():
            self.report.mark_rows[sym] += len(rows)
        for sym, rows in liqs.items():
            self.report.liquidation_rows[sym] += len(rows)

    # ---- polls
    async def poll(self, what: str, symbol: str, stop: asyncio.Event, fn: Any, parse: Any = None) -> Any:
        """parse(fn()) with retries and backoff; None if given up. Every failed attempt is a recorded
        poll_miss; a reply that is not JSON or that `parse` refuses is also counted as malformed,
        logged with its text and recorded in ingest_events (kind 'malformed'), then retried."""
        for attempt in range(1, self.poll_retries + 2):
            replied = False
            reply: Any = None
            try:
                async with self._in_flight:
                    reply = await fn()
                replied = True
                return parse(reply) if parse is not None else reply
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                h = self.health.stream(COLLECTOR)
                note_bad_reply(h, self.events, COLLECTOR, symbol, f"{COLLECTOR} {what}", exc, reply, replied)
                self.report.poll_misses[symbol] += 1
                self.health.add("poll_misses")
                log.warning(
                    "%s %s: poll failed (%s: %s), attempt %d", what, symbol, type(exc).__name__, exc, attempt
                )
                self.events.record(
                    COLLECTOR,
                    symbol,
                    "poll_miss",
                    {"endpoint": what, "attempt": attempt, "error": f"{type(exc).__name__}: {exc}"},
                )
                if attempt > self.poll_retries:
                    return None
                delay = self.poll_backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                if await sleep_or_stop(stop, delay):
                    return None
        return None

    async def oi_loop(self, stop: asyncio.Event, after: asyncio.Event | None = None) -> None:
        while after is not None and not after.is_set():  # the fill's read of the stored times first
            if await sleep_or_stop(stop, 0.05):
                return
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            tables = await asyncio.gather(*(self.oi_once(s, stop) for s in self.symbols))
            # one writer item (one transaction) for the round's polls of every symbol
            self.writer.submit_many(
                "open_interest", [(s, t) for s, t in zip(self.symbols, tables, strict=True) if t is not None]
            )
            next_at += self.oi_interval
            if await sleep_or_stop(stop, max(0.0, next_at - loop.time())):
                return

    async def oi_once(self, symbol: str, stop: asyncio.Event) -> pa.Table | None:
        """One open-interest poll of `symbol`: its row (None when given up)."""

        def parse(body: Any) -> pa.Table:
            ts, oi = [_int(body["time"])], [_num(body["openInterest"])]
            return open_interest_table(ts, oi, None, "rest", recv_ms=now_ms())

        table = await self.poll(
            "/fapi/v1/openInterest", symbol, stop, lambda: self.rest.open_interest(symbol), parse
        )
        if table is None:
            self.report.oi_failed[symbol] += 1
            return None
        self.report.oi_polls[symbol] += 1
        return table

    async def oi_fill(self, stop: asyncio.Event, dsn: str, read: asyncio.Event) -> None:
        """Once, at the start: openInterestHist (5m) since each symbol's last stored open interest
        (none: since today's UTC midnight), at most the 30 days it serves, up to now. `read` is set
        once the stored times are known (the polls wait for it: their rows would hide the gap)."""
        try:
            last_ms = await stored_oi_times(dsn, self.symbols)
        finally:
            read.set()

        async def one(symbol: str) -> None:
            now = await self.poll("/fapi/v1/time", symbol, stop, self.rest.server_time)
            if now is None:
                return
            last = last_ms.get(symbol)
            lo = max(now // DAY_MS * DAY_MS if last is None else last + 1, now - HIST_DAYS * DAY_MS + 60_000)

            async def fetch(start: int, end: int) -> Any:
                return await self.poll(
                    "/futures/data/openInterestHist",
                    symbol,
                    stop,
                    lambda: self.rest.open_interest_hist(
                        symbol, "5m", start_ms=start, end_ms=end, limit=OI_HIST_LIMIT
                    ),
                )

            async def submit(table: pa.Table) -> None:
                await self.writer.submit("open_interest", symbol, table)

            self.report.oi_filled[symbol] += await fill_oi_hist(fetch, submit, lo, now + 1)

        await asyncio.gather(*(one(s) for s in self.symbols))

    async def funding_once(
        self, symbol: str, stop: asyncio.Event, start_ms: int | None = None, limit: int = 10
    ) -> list[int]:
        parsed = await self.poll(
            "/fapi/v1/fundingRate",
            symbol,
            stop,
            lambda: self.rest.funding_rate(symbol, start_ms=start_ms, limit=limit),
            funding_rows_from_rest,
        )
        self.report.funding_polls += 1
        if not parsed:
            return []
        new = [r for r in parsed if r[0] not in self.funding_seen[symbol]]
        if new:
            await self.writer.submit("funding_rates", symbol, funding_table(new))
            self.funding_seen[symbol].update(r[0] for r in new)
            self.report.funding_rows[symbol] += len(new)
        return [r[0] for r in parsed]

    async def funding_loop(self, stop: asyncio.Event) -> None:
        """Latest settlements at start and on an interval; each detected settlement until its row is there."""
        await asyncio.gather(*(self.funding_once(s, stop, limit=3) for s in self.symbols))
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.funding_interval
        waiting: dict[tuple[str, int], int] = {}
        while not stop.is_set():
            timeout = max(0.0, next_at - loop.time())
            if waiting:
                timeout = min(timeout, 2.0)
            getter = asyncio.ensure_future(self.funding_due.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            if getter in done:
                sym, t = getter.result()
                waiting[(sym, t)] = 0
            else:
                getter.cancel()
            if stop.is_set():
                return
            for (sym, t), tries in list(waiting.items()):
                times = await self.funding_once(sym, stop, start_ms=t, limit=10)
                if t in times or tries >= 30:
                    if t not in times:
                        self.events.record(
                            COLLECTOR,
                            sym,
                            "poll_miss",
                            {
                                "endpoint": "/fapi/v1/fundingRate",
                                "funding_ms": t,
                                "error": "settlement not published",
                            },
                        )
                    del waiting[(sym, t)]
                else:
                    waiting[(sym, t)] = tries + 1
            if loop.time() >= next_at:
                await asyncio.gather(*(self.funding_once(s, stop, limit=3) for s in self.symbols))
                next_at = loop.time() + self.funding_interval


async def collect_market_live(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    *,
    live_seconds: float | None = None,
    writer: Any = None,
    stop_event: asyncio.Event | None = None,
    health: Health | None = None,
    events: EventLog | None = None,
    rest: Any = None,
    oi_interval: float = 60.0,
    funding_interval: float = 3600.0,
    flush_interval: float = 1.0,
    stale_timeout: float = 10.0,
    poll_retries: int = 3,
    poll_backoff: float = 1.0,
    shared_streams: SharedStreams | None = None,
    liquidations_stream: str = "auto",
    mark_stream: str = "auto",
) -> MarketReport:
    """Mark prices, funding, open interest and liquidations of `symbols` until stopped (see module doc).

    `liquidations_stream`: 'per-symbol' (`<s>@forceOrder`), 'all' (`!forceOrder@arr`, other symbols'
    orders ignored) or 'auto' (all from FORCE_ALL_FROM symbols on). `mark_stream` alike:
    `<s>@markPrice@1s`, `!markPrice@arr@1s`, or 'auto' (all from MARK_ALL_FROM symbols on)."""
    from microstructure.ingest.binance.rest import BinanceRest

    check_stream_modes(liquidations_stream, mark_stream)  # before anything is opened
    symbols = [s.upper() for s in symbols]
    stop = stop_event or asyncio.Event()
    health = health or Health()
    own_events = events is None
    events = events or EventLog(dsn)
    own_writer = writer is None
    if own_writer:
        writer = await open_writer(settings, dsn)
    own_rest = rest is None
    if own_rest:
        rest = BinanceRest(settings.rest_url)
        await rest.open()
    report = MarketReport(list(symbols))
    m = MarketLive(
        symbols,
        writer,
        rest,
        health,
        events,
        report,
        oi_interval=oi_interval,
        funding_interval=funding_interval,
        poll_retries=poll_retries,
        poll_backoff=poll_backoff,
        liquidations_stream=liquidations_stream,
        mark_stream=mark_stream,
    )
    started = time.monotonic()
    timer = stop_after(stop, live_seconds)
    fill_read = asyncio.Event()
    tasks = [
        asyncio.create_task(m.oi_fill(stop, dsn, fill_read)),
        asyncio.create_task(m.oi_loop(stop, fill_read)),
        asyncio.create_task(m.funding_loop(stop)),
    ]
    conns, stream_task = start_stream(
        settings,
        m.streams(),
        m.on_message,
        shared=shared_streams,
        stop=stop,
        health=health,
        events=events,
        collector=COLLECTOR,
        stale_timeout=stale_timeout,
    )
    if stream_task is not None:
        tasks.append(stream_task)
    if own_events:
        tasks.append(asyncio.create_task(events.run(stop)))
    try:
        while not await sleep_or_stop(stop, flush_interval):
            await m.flush()
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        await asyncio.wait(tasks, timeout=5.0)
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
        await m.flush()
        if own_writer:
            await writer.close()
            report.batches_left = writer.queue_depth
            report.batches_rejected = writer.stats.batches_rejected
            report.batches_dropped = writer.stats.batches_dropped
        else:  # the owner closes it; bounded, so that a stop while the database is away still stops
            await writer.flush(getattr(writer, "close_timeout", None), give_up_when_down=True)
        if own_events:
            await events.flush()
        if own_rest:
            await rest.close()
    hs = health.stream(COLLECTOR)
    totals = conns.totals()  # of the shared connections, or of this collector's own
    report.malformed = hs.malformed + (totals.malformed if shared_streams is None else 0)
    report.reconnects = totals.reconnects  # a stale reconnect is counted there too
    report.seconds = time.monotonic() - started
    return report


# ---------------------------------------------------------------- historical


def _utc(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def months_in(first: date, last: date) -> list[date]:
    out = []
    m = date(first.year, first.month, 1)
    while m <= last:
        out.append(m)
        m = date(m.year + (m.month == 12), m.month % 12 + 1, 1)
    return out


def month_end(m: date) -> date:
    nxt = date(m.year + (m.month == 12), m.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


async def load_oi_hist(
    rest: Any,
    writer: Any,
    sym: str,
    windows: list[tuple[str, int, int]],
    not_before: int,
    *,
    period: str,
    report: HistoricalReport,
    events: EventLog,
    collector: str,
) -> int:
    """openInterestHist of `sym` over each (label, lo, hi) window from `not_before` on; the rows handed
    to the writer. A page that failed after the client's retries is recorded (report.rest_failed,
    ingest_events 'rest_failed') and leaves the rest of its window."""
    from microstructure.ingest.binance.rest import IpBanned
    from microstructure.ingest.collectors.trades_historical import REST_FAILURES

    async def submit(table: pa.Table) -> None:
        await writer.submit("open_interest", sym, table)

    n = 0
    for label, lo, hi in windows:

        async def fetch(start: int, end: int, label: str = label) -> Any:
            try:
                return await rest.open_interest_hist(
                    sym, period, start_ms=start, end_ms=end, limit=OI_HIST_LIMIT
                )
            except IpBanned:
                raise
            except REST_FAILURES as exc:
                report.rest_failed[f"{sym} openInterestHist {label}"] = f"{type(exc).__name__}: {exc}"
                events.record(
                    collector, sym, "rest_failed",
                    {"what": "openInterestHist", "window": label, "error": str(exc)[:300]},
                )  # fmt: skip
                log.error("%s openInterestHist %s failed: %s", sym, label, exc)
                return None

        n += await fill_oi_hist(fetch, submit, max(lo, not_before), hi, OI_PERIOD_MS[period])
    return n


async def collect_market_historical(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    start: date | None = None,
    end: date | None = None,
    *,
    days: int | None = None,
    writer: Any = None,
    rest: Any = None,
    hist_period: str = "5m",
    progress: bool = True,
) -> HistoricalReport:
    """Settled funding, open interest, futures metrics and 1m mark/index/premium klines of a day range.

    Everything is idempotent: rows already stored are kept as they are. `progress`: a bar per symbol
    on a terminal (else a heartbeat line a minute; one info line per day at -v: progress.py).
    """
    from microstructure.ingest.binance import archives
    from microstructure.ingest.binance.rest import BinanceRest, IpBanned, RetryNote
    from microstructure.ingest.collectors.trades_historical import REST_FAILURES

    collector = "market_historical"
    first, last, server_ms = await resolve_days(settings, start, end, days, symbols)
    report = HistoricalReport("market data (funding, open interest, metrics, price klines)")
    events = EventLog(dsn)
    own_writer = writer is None
    if own_writer:
        writer = await open_writer(settings, dsn)
    own_rest = rest is None

    def retried(note: RetryNote) -> None:
        report.rest_retries += 1
        events.record(collector, None, "rest_retry", note.as_detail())

    if own_rest:
        rest = BinanceRest(settings.rest_url, retry_malformed=True, on_retry=retried)
        await rest.open()
    t0 = ms_of_day(first)
    t1 = ms_of_day(last) + DAY_MS  # exclusive
    today_ms = server_ms // DAY_MS * DAY_MS
    conn = await asyncpg.connect(dsn)
    prog = DayProgress("market historical", bar=progress and sys.stderr.isatty()).start()
    try:
        async with aiohttp.ClientSession() as session:

            async def archive(kind: str, sym: str, period: str, when: date | str) -> Any:
                return await load_archive_table(
                    session, settings.archive_url, kind, sym, period, when, report, events, collector
                )

            for sym in symbols:
                prog.add(sym, len(day_range(first, last)))
                prog.update(sym, note="funding rates")
                # -- funding: monthly archives for months that have ended, then REST over the range
                n_fund = 0
                for month in months_in(first, last):
                    if ms_of_day(month_end(month)) + DAY_MS > today_ms:
                        continue  # this month's archive is not published yet: REST covers it
                    parsed = await archive("fundingRate", sym, "monthly", month.strftime("%Y-%m"))
                    if parsed is None:
                        continue
                    _, batch = archives.archive_records("fundingRate", parsed)
                    t = batch.column("funding_ms").to_numpy()
                    batch = batch.filter(pa.array((t >= t0) & (t < t1)))
                    if batch.num_rows:
                        await writer.submit("funding_rates", sym, batch)
                        n_fund += batch.num_rows
                    report.days_loaded[sym] += 1
                cursor = t0
                while cursor < t1:
                    try:
                        page = await rest.funding_rate(sym, start_ms=cursor, end_ms=t1 - 1, limit=1000)
                    except IpBanned:
                        raise
                    except REST_FAILURES as exc:  # after the client's retries: the rest of the range
                        when = datetime.fromtimestamp(cursor / 1000, tz=UTC).date()
                        report.rest_failed[f"{sym} fundingRate from {when}"] = f"{type(exc).__name__}: {exc}"
                        events.record(
                            collector, sym, "rest_failed", {"what": "fundingRate", "error": str(exc)[:300]}
                        )
                        log.error("%s fundingRate from %s failed: %s", sym, when, exc)
                        break
                    rows = funding_rows_from_rest(page)
                    if rows:
                        await writer.submit("funding_rates", sym, funding_table(rows))
                        n_fund += len(rows)
                    if len(page) < 1000:
                        break
                    cursor = rows[-1][0] + 1
                report.notes.append(f"{sym}: {n_fund} settled funding rates handed to the writer")

                # -- daily archives: metrics (futures_metrics + open_interest 'metrics') and klines
                covered: set[date] = set()
                last_archived = t0 - 1  # the time of the last open interest a metrics archive gave
                for d in day_range(first, last):
                    parsed = await archive("metrics", sym, "daily", d)
                    if parsed is not None:
                        tbl = parsed.table
                        covered.add(d)
                        report.days_loaded[sym] += 1
                        metrics = pa.table(
                            {
                                "symbol": pa.array([sym] * tbl.num_rows, pa.string()),
                                "ts": tbl.column("create_time"),
                                **{c: tbl.column(c) for c in list(FUTURES_METRICS)[2:]},
                            }
                        )
                        report.rows[sym] += await merge_table(
                            conn, "futures_metrics", metrics, FUTURES_METRICS
                        )
                        _, batch = archives.archive_records("metrics", parsed)
                        await writer.submit("open_interest", sym, batch)
                        if batch.num_rows:
                            last_archived = max(last_archived, pc.max(batch.column("ts_ms")).as_py())
                    for kind, name in KLINE_KINDS.items():
                        kparsed = await archive(kind, sym, "daily", d)
                        if kparsed is None:
                            continue
                        ktbl = kparsed.table
                        report.days_loaded[sym] += 1
                        n = ktbl.num_rows
                        klines = pa.table(
                            {
                                "symbol": pa.array([sym] * n, pa.string()),
                                "kind": pa.array([name] * n, pa.string()),
                                "ts": ktbl.column("open_time"),
                                **{c: ktbl.column(c) for c in ("open", "high", "low", "close")},
                                "close_ts": ktbl.column("close_time"),
                            }
                        )
                        report.rows[sym] += await merge_table(conn, "price_klines", klines, PRICE_KLINES)
                    prog.update(
                        sym, days=1, rows=report.rows[sym], note=f"{d} archives", label=f"{d} archives"
                    )

                # -- openInterestHist (the last 30 days): the days of the range without a metrics
                # archive and, when the range ends yesterday, from the last archived row up to now
                hist_from = max(t0, server_ms - HIST_DAYS * DAY_MS + 60_000)
                windows = [
                    (d.isoformat(), ms_of_day(d), min(ms_of_day(d) + DAY_MS, t1))
                    for d in day_range(first, last)
                    if d not in covered
                ]
                if t1 >= today_ms:
                    since = last_archived + 1 if last in covered else t1
                    try:
                        now = await rest.server_time()
                    except IpBanned:
                        raise
                    except REST_FAILURES as exc:
                        report.rest_failed[f"{sym} server time"] = f"{type(exc).__name__}: {exc}"
                        log.error("%s server time failed: %s", sym, exc)
                    else:
                        windows.append((f"since {_utc(since)}", since, now + 1))
                prog.update(sym, note="openInterestHist")
                n_hist = await load_oi_hist(
                    rest, writer, sym, windows, hist_from, period=hist_period, report=report, events=events,
                    collector=collector,
                )  # fmt: skip
                if n_hist:
                    report.notes.append(f"{sym}: {n_hist} open-interest rows from openInterestHist")
        await writer.flush()
    finally:
        prog.stop()
        await conn.close()
        await events.flush()
        if own_writer:
            await writer.close()
        if own_rest:
            await rest.close()
    return report
