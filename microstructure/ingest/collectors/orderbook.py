"""Local order books from the diff-depth stream, by Binance's documented procedure.

Per symbol:
1. buffer the `<s>@depth@100ms` events;
2. fetch /fapi/v1/depth (lastUpdateId L): limit=1000 while the symbols' snapshots together fit a
   quarter of the REST weight budget, a smaller one beyond (`snapshot_limit`: 300 symbols take 50
   levels, weight 2 each instead of 20, so every book starts within the first seconds rather than
   over minutes of budget); never fewer than the `levels` stored;
3. drop buffered events with u < L; the first applied event must have U <= L <= u (if the buffer
   starts after L the snapshot is too old: fetch again);
4. every later event must have pu equal to the previous event's u; otherwise the book is out of sync:
   that symbol alone is resynced from step 1 (counted in `resyncs`, recorded in ingest_events with
   kind 'resync'); the other symbols keep going;
5. quantities are absolute; a quantity of 0 removes the level.

Sampling runs on the exchange's clock, not the local one: for each 500 ms boundary B (epoch-aligned)
the book is sampled as it stands after the last update with T < B, at the moment the first update
with T >= B arrives (and before it is applied). So the stored snapshots depend only on the stream:
two collectors on the same stream, or a re-run over a recording, store the same (ts, last_update_id)
rows for every boundary both saw with a synced book. The top `levels` (20 by default, up to the 1000
of the REST snapshot) go to the snapshot sink as a row with source='diff': ts = T and event_ms = E of
that last update, first/last/prev update ids = its U/u/pu. A boundary with no update since the
previous one adds nothing (the book did not move); a book is sampled only once it has applied an
update since its last (re)sync, and the boundary still open when a run stops is not sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from microstructure.ingest.binance.rest import DEPTH_LIMITS, depth_weight
from microstructure.ingest.collectors.book_values import LEVELS
from microstructure.ingest.collectors.runtime import note_bad_reply
from microstructure.ingest.health import StreamHealth
from microstructure.ingest.records import SnapshotRow

log = logging.getLogger(__name__)

MAX_BUFFER = 20_000
SYNC_WAIT_S = 5.0  # how long to wait for the stream to reach a snapshot's lastUpdateId


SNAPSHOT_SHARE = 0.25  # of the REST weight budget a minute, what the start's snapshots may take


def snapshot_limit(symbols: int, budget: int, levels: int = LEVELS) -> int:
    """The largest depth limit whose snapshots of every symbol fit SNAPSHOT_SHARE of `budget` (weight a
    minute), at least the levels stored (and 50: below, a book's top would too often reach past it)."""
    floor = max(levels, 50)
    usable = [lim for lim in DEPTH_LIMITS if lim >= floor]
    for lim in reversed(usable):
        if symbols * depth_weight(lim) <= SNAPSHOT_SHARE * budget:
            return lim
    return usable[0]


@dataclass
class DiffEvent:
    E: int
    T: int
    U: int
    u: int
    pu: int
    b: list[Any]
    a: list[Any]
    recv_ms: int


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def parse_diff_event(data: dict[str, Any], recv_ms: int) -> DiffEvent:
    if data.get("e") != "depthUpdate":
        raise ValueError(f"expected e=depthUpdate, got {data.get('e')!r}")
    b, a = data["b"], data["a"]
    if not isinstance(b, list) or not isinstance(a, list):
        raise TypeError("b/a: expected lists of [price, qty]")
    ev = DiffEvent(
        _int(data["E"]), _int(data["T"]), _int(data["U"]), _int(data["u"]), _int(data["pu"]), b, a, recv_ms
    )
    # parse the levels now so that a malformed one is refused before it touches a book
    ev.b = [(float(p), float(q)) for p, q in b]
    ev.a = [(float(p), float(q)) for p, q in a]
    return ev


def parse_snapshot(snap: Any) -> tuple[int, dict[float, float], dict[float, float]]:
    """(lastUpdateId, bids, asks) of a /fapi/v1/depth answer; TypeError/KeyError/ValueError when malformed."""
    if not isinstance(snap, dict):
        raise TypeError(f"expected a depth object, got {type(snap).__name__}")
    last_u = _int(snap["lastUpdateId"])
    sides = []
    for side in ("bids", "asks"):
        levels = snap[side]
        if not isinstance(levels, list):
            raise TypeError(f"{side}: expected a list of [price, qty]")
        sides.append({float(p): float(q) for p, q in levels if float(q) != 0.0})
    return last_u, sides[0], sides[1]


@dataclass
class LocalBook:
    symbol: str
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    synced: bool = False
    last_u: int | None = None
    last: DiffEvent | None = None
    buffer: deque[DiffEvent] = field(default_factory=deque)
    sampled_u: int | None = None
    snapshot_id: int | None = None

    def apply(self, ev: DiffEvent) -> None:
        for side, levels in ((self.bids, ev.b), (self.asks, ev.a)):
            for p, q in levels:
                if q == 0.0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.last_u = ev.u
        self.last = ev

    def load(self, snap: dict[str, Any]) -> None:
        self.last_u, self.bids, self.asks = parse_snapshot(snap)
        self.snapshot_id = self.last_u
        self.last = None  # no update applied since this snapshot: nothing to sample yet

    def top(self, n: int = LEVELS) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        bp = heapq.nlargest(n, self.bids)
        ap = heapq.nsmallest(n, self.asks)
        return [(p, self.bids[p]) for p in bp], [(p, self.asks[p]) for p in ap]


class DiffBooks:
    """The local books of several symbols fed from one diff-stream connection."""

    def __init__(
        self,
        symbols: Sequence[str],
        rest: Any,
        *,
        sink: Any = None,
        events: Any = None,
        health: Any = None,
        collector: str = "book_diff",
        depth_limit: int | None = None,
        levels: int = LEVELS,
        sample_ms: int = 500,
    ) -> None:
        if depth_limit is None:  # from the symbol count and the client's budget (see snapshot_limit)
            depth_limit = snapshot_limit(len(symbols), int(getattr(rest, "budget", 2400)), levels)
        if not LEVELS <= levels <= depth_limit:
            raise ValueError(f"levels: expected {LEVELS}..{depth_limit}, got {levels}")
        if sample_ms <= 0:
            raise ValueError(f"sample_ms: expected a number of milliseconds > 0, got {sample_ms}")
        self.sample_ms = sample_ms
        self.books = {s: LocalBook(s) for s in symbols}
        self.levels = levels
        self.rest = rest
        self.sink = sink
        self.events = events
        self.health = health
        self.collector = collector
        self.depth_limit = depth_limit
        self.resyncs: dict[str, int] = defaultdict(int)
        self.syncs: dict[str, int] = defaultdict(int)  # completed synchronisations (first one included)
        self.breaks: list[tuple[str, int, int]] = []  # (symbol, expected pu, received pu)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._malformed = StreamHealth()  # malformed snapshots counted here when there is no health view

    # ---- stream side
    def on_event(self, symbol: str, data: dict[str, Any], recv_ms: int) -> None:
        ev = parse_diff_event(data, recv_ms)
        if data.get("s") not in (None, symbol):
            raise ValueError(f"symbol {data.get('s')!r} on the stream of {symbol}")
        book = self.books[symbol]
        if not book.synced:
            book.buffer.append(ev)
            if len(book.buffer) > MAX_BUFFER:
                book.buffer.popleft()
            self._ensure_sync(symbol)
            return
        assert book.last_u is not None
        if ev.pu != book.last_u:
            if ev.u <= book.last_u:
                return  # an event we already applied (overlapping connections)
            self._resync(symbol, ev)
            return
        self._apply(symbol, book, ev)

    def _apply(self, symbol: str, book: LocalBook, ev: DiffEvent) -> None:
        """Apply `ev`; first, when it is the first update at or after a sampling boundary, sample the
        book as the last update before the boundary left it."""
        prev = book.last
        if prev is not None and prev.T // self.sample_ms < ev.T // self.sample_ms:
            self._sample(symbol, book)
        book.apply(ev)

    def _resync(self, symbol: str, ev: DiffEvent) -> None:
        book = self.books[symbol]
        self.resyncs[symbol] += 1
        self.breaks.append((symbol, book.last_u or -1, ev.pu))
        detail = {"expected_pu": book.last_u, "pu": ev.pu, "U": ev.U, "u": ev.u, "T": ev.T}
        log.warning(
            "%s: diff stream out of sequence (pu %s, expected %s): resync", symbol, ev.pu, book.last_u
        )
        if self.events is not None:
            self.events.record(self.collector, symbol, "resync", detail)
        if self.health is not None:
            self.health.add("book_resyncs")
        book.synced = False
        book.bids.clear()
        book.asks.clear()
        book.buffer.clear()
        book.buffer.append(ev)
        self._ensure_sync(symbol)

    def _ensure_sync(self, symbol: str) -> None:
        task = self._tasks.get(symbol)
        if task is None or task.done():
            self._tasks[symbol] = asyncio.create_task(self._sync(symbol))

    # ---- synchronisation
    async def _sync(self, symbol: str) -> None:
        book = self.books[symbol]
        attempt = 0
        while not book.synced:
            attempt += 1
            if attempt > 1:
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))
            snap: Any = None
            replied = False
            try:
                snap = await self.rest.depth(symbol, self.depth_limit)
                replied = True
                L = parse_snapshot(snap)[0]
            except Exception as exc:  # a failed or malformed snapshot is retried; the miss is recorded
                self._snapshot_miss(symbol, exc, replied, snap)
                continue
            # wait for the stream to reach the snapshot
            waited = 0.0
            while not (book.buffer and book.buffer[-1].u >= L) and waited < SYNC_WAIT_S:
                await asyncio.sleep(0.02)
                waited += 0.02
            while book.buffer and book.buffer[0].u < L:
                book.buffer.popleft()
            if not book.buffer or not (book.buffer[0].U <= L <= book.buffer[0].u):
                log.info("%s: snapshot %d does not join the buffered events; fetching again", symbol, L)
                continue
            book.load(snap)
            ok = True
            first = True
            while book.buffer:
                ev = book.buffer.popleft()
                if not first and ev.pu != book.last_u:
                    ok = False
                    self.breaks.append((symbol, book.last_u or -1, ev.pu))
                    self.resyncs[symbol] += 1
                    if self.events is not None:
                        self.events.record(
                            self.collector,
                            symbol,
                            "resync",
                            {"expected_pu": book.last_u, "pu": ev.pu, "U": ev.U, "u": ev.u, "during": "sync"},
                        )
                    book.buffer.clear()
                    book.buffer.append(ev)
                    break
                self._apply(symbol, book, ev)
                first = False
            if ok:
                book.synced = True
                self.syncs[symbol] += 1
                log.info("%s: local book synced at update id %s", symbol, book.last_u)

    def _snapshot_miss(self, symbol: str, exc: Exception, replied: bool, reply: Any) -> None:
        """A depth snapshot that failed: a poll_miss event; when it came back malformed (not JSON, or
        fields missing) also counted as malformed, logged with its text and recorded as 'malformed'."""
        log.warning("%s: depth snapshot failed (%s: %s); retrying", symbol, type(exc).__name__, exc)
        h = self.health.stream(self.collector) if self.health is not None else self._malformed
        note_bad_reply(
            h, self.events, self.collector, symbol, f"{self.collector} /fapi/v1/depth", exc, reply, replied
        )
        if self.health is not None:
            self.health.add("poll_misses")
        if self.events is not None:
            self.events.record(
                self.collector,
                symbol,
                "poll_miss",
                {"endpoint": "/fapi/v1/depth", "error": f"{type(exc).__name__}: {exc}"},
            )

    # ---- sampling
    def _sample(self, symbol: str, book: LocalBook) -> bool:
        """Hand the top `levels` of `book`, as its last applied update left it, to the sink."""
        ev = book.last
        if ev is None or book.last_u == book.sampled_u:
            return False
        bids, asks = book.top(self.levels)
        row = SnapshotRow(
            event_ms=ev.E,
            ts_ms=ev.T,
            first_update_id=ev.U,
            last_update_id=ev.u,
            prev_update_id=ev.pu,
            bids=[list(x) for x in bids],
            asks=[list(x) for x in asks],
            recv_ms=ev.recv_ms,
        )
        book.sampled_u = book.last_u
        return self.sink is not None and bool(self.sink.add(symbol, row))

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        for t in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
