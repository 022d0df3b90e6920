"""Binance combined websocket streams: one connection with reconnects, and connections shared by collectors.

- `combined_stream`: one Binance combined websocket (`/stream?streams=a/b`) with reconnects
  (jittered backoff), staleness detection and malformed-message accounting;
- `SharedStreams`: connections of up to 1024 streams each (Binance's limit; those beyond the URL's
  length SUBSCRIBEd, paced under the 10 incoming messages a second; attempts kept under the per-IP
  connection limit), rotated with overlap before Binance's 24 h
  limit, serving one collector or several (`collect all`), routed by stream name.
Both report to a `health.Health` and a `health.EventLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import orjson

from microstructure.ingest.health import EventLog, Health, StreamHealth, note_malformed, now_ms
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

loads = orjson.loads  # JSON of every message: orjson is several times faster than json

Handler = Callable[[str, Any, int], None]

_STREAM_NAME = re.compile(r'"stream"\s*:\s*"([^"\\]{1,200})"')


def stream_of(text: Any) -> str:
    """The stream name at the head of a combined-stream message that did not parse ("" if none)."""
    m = _STREAM_NAME.search(text[:400]) if isinstance(text, str) else None
    return m.group(1) if m else ""


ENDED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


async def _watch_connection(
    ws: aiohttp.ClientWebSocketResponse, h: StreamHealth, stop: asyncio.Event, stale_timeout: float,
    state: dict[str, bool],
) -> None:  # fmt: skip
    """One periodic check per connection instead of a timer per message: the last message's time
    (kept by the reader) compared with the clock; a silent connection, or `stop`, closes it."""
    period = max(0.05, min(1.0, stale_timeout / 4))
    while not ws.closed:
        if await sleep_or_stop(stop, period):
            break
        if now_ms() - max(h.last_recv_ms, state["since_ms"]) > stale_timeout * 1000:
            state["stale"] = True
            break
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 2.0)


# Binance's websocket limits (USD-M Futures): 1024 streams a connection, 10 incoming messages a
# second a connection (pings, pongs and SUBSCRIBEs count; beyond, the connection is dropped), 300
# connection attempts per 5 minutes per IP (beyond, 429 and then a ban).
URL_MAX_CHARS = 4000  # streams named in the URL up to this length (servers cap a request line at 8 KiB)
SUBSCRIBE_CHUNK = 200  # streams per SUBSCRIBE message for the rest
SUBSCRIBE_EVERY_S = 0.25  # 4 SUBSCRIBEs a second: well under the 10 messages/s, with room for pongs
CONNECTIONS_PER_WINDOW = 250  # attempts per CONNECTION_WINDOW_S this process allows itself (Binance: 300)
CONNECTION_WINDOW_S = 300.0


class ConnectionBudget:
    """Connection attempts of this process kept under the exchange's per-IP limit: an attempt past
    `limit` in `window` seconds waits until the oldest leaves the window."""

    def __init__(self, limit: int = CONNECTIONS_PER_WINDOW, window: float = CONNECTION_WINDOW_S) -> None:
        self.limit = limit
        self.window = window
        self.times: deque[float] = deque()
        self.waited = 0  # attempts that had to wait

    async def take(self, stop: asyncio.Event) -> bool:
        """True when the attempt may go; False when `stop` came first."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self.times and now - self.times[0] >= self.window:
                self.times.popleft()
            if len(self.times) < self.limit:
                self.times.append(now)
                return True
            self.waited += 1
            log.warning("websocket connection attempts at the per-IP budget; waiting")
            if await sleep_or_stop(stop, self.times[0] + self.window - now):
                return False


_BUDGETS: dict[str, ConnectionBudget] = {}  # per server (the limit is the server's, per client address)


def connection_budget(ws_base: str) -> ConnectionBudget:
    return _BUDGETS.setdefault(ws_base.rstrip("/"), ConnectionBudget())


def split_streams(streams: Sequence[str], url_max: int = URL_MAX_CHARS) -> tuple[list[str], list[list[str]]]:
    """(the streams named in the URL, the SUBSCRIBE messages' stream lists for the rest)."""
    head: list[str] = []
    size = 0
    for name in streams:
        if head and size + len(name) + 1 > url_max:
            break
        head.append(name)
        size += len(name) + 1
    rest = list(streams[len(head) :])
    return head, [rest[i : i + SUBSCRIBE_CHUNK] for i in range(0, len(rest), SUBSCRIBE_CHUNK)]


async def _subscribe(ws: aiohttp.ClientWebSocketResponse, chunks: list[list[str]]) -> None:
    """The streams beyond the URL, SUBSCRIBEd one chunk every SUBSCRIBE_EVERY_S (paced under the
    exchange's incoming-message limit)."""
    for n, chunk in enumerate(chunks, start=1):
        await asyncio.sleep(SUBSCRIBE_EVERY_S)
        await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": chunk, "id": n}).decode())


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
    owner_of: Callable[[str], str | None] | None = None,
) -> AsyncIterator[tuple[str, Any, int]]:
    """(stream, data, recv_ms) of a combined-stream connection, reconnecting forever until `stop`.

    - no message for `stale_timeout` seconds: the connection is dropped and made again (a watcher
      task per connection compares the last message's time with the clock a few times a second: no
      future or timer per message);
    - closed or failed connections come back with jittered exponential backoff (capped);
    - a message that is not JSON or not {"stream","data"} is counted, logged (the first ones with their
      text) and recorded in ingest_events; the stream goes on. With `owner_of` (stream name -> the
      collector it is for), one whose stream name can still be read (a truncated message keeps its
      head) is counted under that collector; the others under the connection (`name`).
    """
    h = health.stream(name)
    head, chunks = split_streams(streams)
    budget = connection_budget(ws_base)
    url = ws_base.rstrip("/") + "/stream?streams=" + "/".join(head)
    own = session is None
    sess = session or aiohttp.ClientSession()
    attempt = 0
    text = aiohttp.WSMsgType.TEXT
    try:
        while not stop.is_set():
            if not await budget.take(stop):
                return
            try:
                async with sess.ws_connect(url, autoping=True, heartbeat=None, max_msg_size=1 << 22) as ws:
                    attempt = 0
                    state = {"stale": False, "since_ms": now_ms()}
                    watcher = asyncio.create_task(_watch_connection(ws, h, stop, stale_timeout, state))
                    subscriber = asyncio.create_task(_subscribe(ws, chunks)) if chunks else None
                    try:
                        while True:
                            msg = await ws.receive()
                            if msg.type is not text:
                                if msg.type in ENDED:
                                    break  # closed, closing or failed
                                continue
                            recv_ms = now_ms()
                            h.messages += 1
                            h.last_recv_ms = recv_ms
                            try:
                                obj = loads(msg.data)
                                if "stream" not in obj and "id" in obj and obj.get("error") is None:
                                    continue  # a SUBSCRIBE's answer ({"result": null, "id": n})
                                stream_name, data = obj["stream"], obj["data"]
                                # (an all-market stream, `!markPrice@arr@1s`, carries an array)
                                if not isinstance(stream_name, str) or not isinstance(data, dict | list):
                                    raise TypeError("stream/data of the wrong type")
                            except (ValueError, KeyError, TypeError) as exc:
                                owner = owner_of(stream_of(msg.data)) if owner_of is not None else None
                                if owner is None:
                                    note_malformed(h, events, collector, None, name, msg.data, exc)
                                else:
                                    note_malformed(
                                        health.stream(owner), events, owner, None, owner, msg.data, exc
                                    )
                                continue
                            yield stream_name, data, recv_ms
                    finally:
                        for task in (watcher, subscriber):
                            if task is not None:
                                task.cancel()
                                with contextlib.suppress(asyncio.CancelledError, Exception):
                                    await task
                    if stop.is_set():
                        return
                    if state["stale"]:
                        h.stale_reconnects += 1
                        log.warning("%s: no message for %.1f s; reconnecting", name, stale_timeout)
                        if events is not None:
                            events.record(collector, None, "reconnect", {"stream": name, "reason": "stale"})
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
            await sleep_or_stop(stop, delay)
    finally:
        if own:
            await sess.close()


MALFORMED_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError)


STREAMS_PER_CONNECTION = 1024  # Binance's limit: the first in the URL, the rest SUBSCRIBEd (paced)
ROTATE_AFTER = 23 * 3600.0  # Binance closes a connection at 24 h; replace it before, with overlap
# seconds after a rotation during which copies from the old and new connection are still dropped
HANDOFF_GRACE = 5.0


def message_key(stream: str, data: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one exchange message from another on a stream: event time, update id, aggregate
    id, and for liquidations the order's symbol and trade time. Two connections deliver the same
    message with the same key. Never raises: a field of an unexpected type keys by its repr."""
    if isinstance(data, list):  # an all-market array: its first event's key stands for it
        first = data[0] if data and isinstance(data[0], dict) else {}
        return ("arr", *message_key(stream, first))
    order = data.get("o")
    o = order if isinstance(order, dict) else {}
    fields = (data.get("E"), data.get("u"), data.get("a"), data.get("s"), o.get("s"), o.get("T"))
    # (a depth message's "a" is its ask levels, a list: repr keeps the key hashable)
    return (stream, *(v if v is None or isinstance(v, int | float | str) else repr(v) for v in fields))


class SharedStreams:
    """Combined-stream connections serving one or more collectors.

    Collectors register their streams and a handler (`collect all` registers every collector with one
    instance; a collector running alone has an instance of its own); messages are routed by stream
    name. Streams are split over connections of up to `per_connection` streams. Each connection is
    replaced every `rotate_after` seconds by a new one that starts first and takes over once it
    delivers (Binance ends connections at 24 h); while both deliver, and for a few seconds after,
    a message already handed on by one is dropped when the other repeats it (`message_key`), so
    handlers see each message once.

    Messages and malformed ones are counted under the owning collector's name (a message that does
    not parse too, when its stream name can be read); connection-level counts (reconnects, messages
    whose stream cannot be told) under `NAME[i]#n`, connection n of slot i.
    """

    def __init__(self, ws_base: str, *, expected: int, health: Health, events: EventLog | None,
                 stale_timeout: float = 10.0, name: str = "streams", rotate_after: float = ROTATE_AFTER,
                 per_connection: int = STREAMS_PER_CONNECTION) -> None:  # fmt: skip
        self.ws_base = ws_base
        self.expected = expected
        self.health = health
        self.events = events
        self.stale_timeout = stale_timeout
        self.name = name
        self.rotate_after = rotate_after
        self.per_connection = per_connection
        self.routes: dict[str, tuple[Handler, str]] = {}
        self.registered = 0
        self.ready = asyncio.Event()
        self.rotations = 0
        self.connections: list[str] = []  # names of every connection made, for the totals
        self._handoffs = 0  # slots in a rotation handoff
        self._seen: set[tuple[Any, ...]] = set()

    def register(self, streams: Sequence[str], handler: Handler, owner: str) -> None:
        for s in streams:
            self.routes[s] = (handler, owner)
        self.registered += 1
        if self.registered >= self.expected:
            self.ready.set()

    def owner_of(self, stream: str) -> str | None:
        route = self.routes.get(stream)
        return route[1] if route is not None else None

    def dispatch(self, stream: str, data: Any, recv_ms: int) -> None:
        route = self.routes.get(stream)
        if route is None:
            return
        if self._handoffs:
            key = message_key(stream, data)
            if key in self._seen:
                return
            self._seen.add(key)
        handler, owner = route
        h = self.health.stream(owner)
        h.messages += 1
        h.last_recv_ms = recv_ms
        try:
            handler(stream, data, recv_ms)
        except MALFORMED_ERRORS as exc:
            symbol = data.get("s") if isinstance(data, dict) else None
            note_malformed(h, self.events, owner, symbol, owner, data, exc)

    def totals(self) -> StreamHealth:
        """Connection-level counts summed over every connection this instance made."""
        out = StreamHealth()
        for name in self.connections:
            h = self.health.stream(name)
            out.messages += h.messages
            out.malformed += h.malformed
            out.reconnects += h.reconnects
            out.stale_reconnects += h.stale_reconnects
            out.last_recv_ms = max(out.last_recv_ms, h.last_recv_ms)
        return out

    async def run(self, stop: asyncio.Event, wait_for_collectors: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), wait_for_collectors)
        names = list(self.routes)
        if not names:
            return
        n = self.per_connection
        await asyncio.gather(
            *(self._slot(names[i : i + n], f"{self.name}[{i // n}]", stop) for i in range(0, len(names), n))
        )

    async def _connection(self, streams: list[str], name: str, stop: asyncio.Event,
                          first: asyncio.Event | None = None) -> None:  # fmt: skip
        async for stream_name, data, recv_ms in combined_stream(
            self.ws_base, streams, stop=stop, name=name, health=self.health, events=self.events,
            collector=self.name, stale_timeout=self.stale_timeout, owner_of=self.owner_of,
        ):  # fmt: skip
            if first is not None and not first.is_set():
                first.set()
            self.dispatch(stream_name, data, recv_ms)

    async def _slot(self, streams: list[str], slot: str, stop: asyncio.Event) -> None:
        """One logical connection that replaces itself every `rotate_after` s, with overlap."""
        live: list[tuple[asyncio.Task[None], asyncio.Event]] = []

        def connect(first: asyncio.Event | None = None) -> None:
            conn_stop = asyncio.Event()
            name = f"{slot}#{len(self.connections) + 1}"
            self.connections.append(name)
            live.append((asyncio.create_task(self._connection(streams, name, conn_stop, first)), conn_stop))

        async def watch(seconds: float) -> bool:
            """Sleep up to `seconds` while the current connection runs; True once `stop` is set. A
            connection that failed (a handler's bug, not a network error: those it retries itself)
            raises here rather than leaving the slot without a connection until the next rotation."""
            current = live[-1][0]
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({stopper, current}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
            if current.done() and not stop.is_set():
                current.result()
                raise RuntimeError(f"{slot}: connection ended before stop")
            return stop.is_set()

        connect()
        grace = min(HANDOFF_GRACE, self.rotate_after / 2)
        wait = self.rotate_after
        try:
            while not await watch(wait):
                self._handoffs += 1
                try:
                    first = asyncio.Event()
                    connect(first)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(first.wait(), max(self.stale_timeout, 5.0))
                    old, old_stop = live.pop(0)
                    old_stop.set()
                    await old
                    self.rotations += 1
                    await watch(grace)  # the new connection may still repeat a few
                    wait = self.rotate_after - grace
                finally:
                    self._handoffs -= 1
                    if not self._handoffs:
                        self._seen.clear()
        finally:
            for _, conn_stop in live:
                conn_stop.set()
            for task, _ in live:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
