"""Websocket streams of Binance USD-M Futures: raw /ws, combined /stream, SUBSCRIBE and friends.

One producer task walks the market clock: it pushes each aggregate trade when its time arrives, a
diff-depth / partial-depth event on each 100/250/500 ms boundary, mark price every 1 s or 3 s and
(sampled, the latest per symbol per second) liquidation orders. Payloads are formatted once per
stream and fanned out to the subscribed connections, each with its own send queue and task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from aiohttp import WSMsgType, web

from microstructure.exchange import healable
from microstructure.exchange.book import GRID_MS, Book, book_at, book_diff, update_id
from microstructure.exchange.config import ExchangeConfig
from microstructure.exchange.market import FUNDING_MS, SymbolMarket
from microstructure.exchange.rest import fmt_units

log = logging.getLogger(__name__)


class ExchangeState(Protocol):
    """What the websocket side reads of the exchange it serves (server.LocalExchange is one)."""

    config: ExchangeConfig
    markets: dict[str, SymbolMarket]
    hub: Hub
    connections: set[Connection]

    def now_ms(self) -> int: ...


MAX_QUEUE = 200_000
MAX_STREAMS = 1024


@dataclass(frozen=True)
class StreamKey:
    name: str
    symbol: str | None  # upper case; None for !forceOrder@arr
    kind: str  # aggTrade | depth | partial | markPrice | forceOrder | forceOrderAll
    interval: int = 0  # ms
    levels: int = 0


_DEPTH = re.compile(r"^depth(5|10|20)?(?:@(100|250|500)ms)?$")
_MARK = re.compile(r"^markPrice(?:@(1s))?$")


def parse_stream(name: str) -> StreamKey | None:
    if name == "!forceOrder@arr":
        return StreamKey(name, None, "forceOrderAll")
    if name in ("!markPrice@arr", "!markPrice@arr@1s"):  # every symbol's mark price, one array a tick
        return StreamKey(name, None, "markPriceAll", 1000 if name.endswith("@1s") else 3000)
    sym, sep, rest = name.partition("@")
    if not sep or not re.fullmatch(r"[A-Za-z0-9]+", sym):
        return None
    canonical = f"{sym.lower()}@{rest}"
    symbol = sym.upper()
    if rest == "aggTrade":
        return StreamKey(canonical, symbol, "aggTrade")
    if rest == "forceOrder":
        return StreamKey(canonical, symbol, "forceOrder")
    m = _DEPTH.match(rest)
    if m:
        interval = int(m.group(2) or 250)
        if m.group(1):
            return StreamKey(canonical, symbol, "partial", interval, int(m.group(1)))
        return StreamKey(canonical, symbol, "depth", interval)
    m = _MARK.match(rest)
    if m:
        return StreamKey(canonical, symbol, "markPrice", 1000 if m.group(1) else 3000)
    return None


@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    combined: bool
    rng: random.Random
    ex: ExchangeState
    streams: set[str] = field(default_factory=set)
    out: deque[str] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    closed: bool = False
    last_pong: float = 0.0
    stalled_until: float = 0.0  # time.monotonic(); data offered before then is not sent (ws_stall_*)

    def offer(self, key: StreamKey, payload: str, wrapped: str) -> None:
        if self.closed or (self.stalled_until and time.monotonic() < self.stalled_until):
            return
        faults = self.ex.config.faults
        if (
            key.kind == "aggTrade"
            and faults.ws_skip_agg_trades
            and self.rng.random() < faults.ws_skip_agg_trades
        ):
            return
        if key.kind == "depth" and faults.ws_break_depth and self.rng.random() < faults.ws_break_depth:
            return
        msg = wrapped if self.combined else payload
        if faults.ws_malformed and self.rng.random() < faults.ws_malformed:
            msg = msg[: max(1, len(msg) // 2)]
        if len(self.out) >= MAX_QUEUE:  # a consumer too slow for the stream is dropped, as Binance does
            self.abort()
            return
        self.out.append(msg)
        self.wake.set()

    def reply(self, obj: object) -> None:
        self.out.append(json.dumps(obj, separators=(",", ":")))
        self.wake.set()

    def abort(self) -> None:
        """Drop the connection without a close frame (as a network failure would)."""
        self.closed = True
        self.wake.set()
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


class Hub:
    def __init__(self) -> None:
        self.subs: dict[str, set[Connection]] = {}
        self.keys: dict[str, StreamKey] = {}

    def subscribe(self, conn: Connection, keys: list[StreamKey]) -> None:
        for key in keys:
            self.keys[key.name] = key
            self.subs.setdefault(key.name, set()).add(conn)
            conn.streams.add(key.name)

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            conn.streams.discard(name)
            subs = self.subs.get(name)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.subs[name]

    def drop(self, conn: Connection) -> None:
        self.unsubscribe(conn, list(conn.streams))

    def active(self) -> list[StreamKey]:
        return [self.keys[n] for n in self.subs]

    def publish(self, key: StreamKey, payload: str) -> None:
        conns = self.subs.get(key.name)
        if not conns:
            return
        wrapped = ""
        for c in list(conns):
            if c.combined and not wrapped:
                wrapped = f'{{"stream":"{key.name}","data":{payload}}}'
            c.offer(key, payload, wrapped)


# ---------------------------------------------------------------- producer


class Producer:
    """Turns the market clock into stream events."""

    def __init__(self, ex: ExchangeState) -> None:
        self.ex = ex
        self.hub = ex.hub
        now = ex.now_ms()
        self.cursor: dict[str, tuple[int, int]] = {s: m.trade_index_after(now) for s, m in ex.markets.items()}
        self.prev_books: dict[tuple[str, int], Book] = {}
        self.last_step: dict[tuple[str, str, int], int] = {}
        self.last_force_sec = now // 1000 * 1000
        self.messages = 0

    async def run(self) -> None:
        while True:
            try:
                await self.ensure_ahead()
                self.tick(self.ex.now_ms())
            except asyncio.CancelledError:
                raise
            except Exception:  # keep streaming whatever one tick did
                log.exception("stream producer tick failed")
            await asyncio.sleep(0.01 if self.hub.subs else 0.05)

    async def ensure_ahead(self) -> None:
        now = self.ex.now_ms()
        for market in self.ex.markets.values():
            if market.end_ms <= now + 5_000:
                await asyncio.get_running_loop().run_in_executor(None, market.ensure, now + 10_000)

    def tick(self, now: int) -> None:
        active = self.hub.active()
        by_symbol: dict[str, list[StreamKey]] = {}
        for key in active:
            by_symbol.setdefault(key.symbol or "*", []).append(key)
        delisted = getattr(self.ex, "delisted", {})
        for sym in list(self.ex.markets):
            if sym in delisted:
                continue  # settling: its streams are silent
            keys = by_symbol.get(sym, [])
            self.agg_trades(sym, now, [k for k in keys if k.kind == "aggTrade"])
            depth_keys = [k for k in keys if k.kind in ("depth", "partial")]
            if depth_keys:
                self.depth(sym, now, depth_keys)
            else:
                for k in [k for k in self.prev_books if k[0] == sym]:
                    del self.prev_books[k]
            for key in keys:
                if key.kind == "markPrice":
                    self.mark_price(sym, now, key)
        for key in active:
            if key.kind == "markPriceAll":
                self.mark_price_all(now, key, delisted)
        force_keys = [k for k in active if k.kind in ("forceOrder", "forceOrderAll")]
        sec = now // 1000 * 1000
        if sec > self.last_force_sec:
            if force_keys:
                self.force_orders(self.last_force_sec, sec, now, force_keys)
            self.last_force_sec = sec

    def agg_trades(self, sym: str, now: int, keys: list[StreamKey]) -> None:
        market = self.ex.markets[sym]
        k, i = self.cursor[sym]
        segs = market.segments
        spec = market.spec
        pd, qd = spec.price_decimals, spec.qty_decimals
        while k < len(segs):
            seg = segs[k]
            i1 = int(np.searchsorted(seg.T, now, side="right"))
            if i1 > i and keys:
                T = seg.T[i:i1].tolist()
                p = seg.price[i:i1].tolist()
                q = seg.qty[i:i1].tolist()
                f = seg.first[i:i1].tolist()
                lt = seg.last[i:i1].tolist()
                m = seg.maker[i:i1].tolist()
                a0 = seg.agg_id0 + i
                faults = self.ex.config.faults
                hidden: list[bool] | None = None
                if healable.live_active(faults):
                    ids = np.arange(a0, a0 + i1 - i, dtype=np.int64)
                    hidden = healable.withheld(ids, self.ex.config.seed, faults).tolist()
                    bump = healable.differing(ids, self.ex.config.seed, faults)
                    p = (seg.price[i:i1] + bump.astype(seg.price.dtype) * spec.tick).tolist()
                for j in range(i1 - i):
                    if hidden is not None and hidden[j]:
                        continue
                    payload = (
                        f'{{"e":"aggTrade","E":{now},"s":"{sym}","a":{a0 + j},"p":"{fmt_units(p[j], pd)}",'
                        f'"q":"{fmt_units(q[j], qd)}","f":{f[j]},"l":{lt[j]},"T":{T[j]},'
                        f'"m":{"true" if m[j] else "false"}}}'
                    )
                    for key in keys:
                        self.hub.publish(key, payload)
                self.messages += i1 - i
            i = max(i, i1)
            if i >= seg.n and k + 1 < len(segs) and segs[k + 1].t0 <= now:
                k, i = k + 1, 0
                continue
            break
        self.cursor[sym] = (k, i)

    def depth(self, sym: str, now: int, keys: list[StreamKey]) -> None:
        market = self.ex.markets[sym]
        spec = market.spec
        pd, qd = spec.price_decimals, spec.qty_decimals
        k_now = now // GRID_MS
        cache: dict[int, Book] = {}

        def book(k: int) -> Book:
            if k not in cache:
                cache[k] = book_at(market, k)
            return cache[k]

        def levels(prices: np.ndarray, qty: np.ndarray) -> str:
            return ",".join(
                f'["{fmt_units(p, pd)}","{fmt_units(q, qd)}"]'
                for p, q in zip(prices.tolist(), qty.tolist(), strict=False)
            )

        for key in keys:
            step = key.interval // GRID_MS
            k_t = k_now // step * step
            state = (sym, key.name, step)
            last = self.last_step.get(state)
            if last is not None and k_t <= last:
                continue
            self.last_step[state] = k_t
            new = book(k_t)
            if key.kind == "partial":
                pu = update_id(k_t - step, market.seed)
                b = levels(new.bids.prices[: key.levels], new.bids.qty[: key.levels])
                a = levels(new.asks.prices[: key.levels], new.asks.qty[: key.levels])
                payload = (
                    f'{{"e":"depthUpdate","E":{now},"T":{k_t * GRID_MS},"s":"{sym}","U":{pu + 1},'
                    f'"u":{new.update_id},"pu":{pu},"b":[{b}],"a":[{a}]}}'
                )
            else:
                prev = self.prev_books.get((sym, step))
                if prev is None or prev.k >= k_t:
                    prev = book(k_t - step)
                between = [book(k) for k in range(prev.k + 1, k_t)]
                (bp, bq), (ap, aq) = book_diff(prev, new, between)
                self.prev_books[(sym, step)] = new
                payload = (
                    f'{{"e":"depthUpdate","E":{now},"T":{k_t * GRID_MS},"s":"{sym}","U":{prev.update_id + 1},'
                    f'"u":{new.update_id},"pu":{prev.update_id},"b":[{levels(bp, bq)}],"a":[{levels(ap, aq)}]}}'
                )
            self.hub.publish(key, payload)
            self.messages += 1

    def mark_price(self, sym: str, now: int, key: StreamKey) -> None:
        s = now // key.interval * key.interval
        state = (sym, key.name, key.interval)
        if self.last_step.get(state, -1) >= s:
            return
        self.last_step[state] = s
        self.hub.publish(key, self.mark_payload(sym, now, s))
        self.messages += 1

    def mark_price_all(self, now: int, key: StreamKey, delisted: dict[str, int]) -> None:
        """`!markPrice@arr[@1s]`: one array of every trading symbol's markPriceUpdate per interval."""
        s = now // key.interval * key.interval
        state = ("*", key.name, key.interval)
        if self.last_step.get(state, -1) >= s:
            return
        self.last_step[state] = s
        items = [self.mark_payload(sym, now, s) for sym in list(self.ex.markets) if sym not in delisted]
        self.hub.publish(key, "[" + ",".join(items) + "]")
        self.messages += 1

    def mark_payload(self, sym: str, now: int, s: int) -> str:
        seg, i = self.ex.markets[sym].second_at(s)
        if sym in self.ex.config.formats.dated_symbols:  # no funding: Binance's "not applicable" values
            settle, rate, next_funding = "0.00000000", "", 0
        else:
            settle, rate = f"{seg.index[i]:.8f}", f"{seg.est_rate[i]:.8f}"
            next_funding = (s // FUNDING_MS + 1) * FUNDING_MS
        return (
            f'{{"e":"markPriceUpdate","E":{now},"s":"{sym}","p":"{seg.mark[i]:.8f}","i":"{seg.index[i]:.8f}",'
            f'"P":"{settle}","r":"{rate}","T":{next_funding}}}'
        )

    def force_orders(self, t0: int, t1: int, now: int, keys: list[StreamKey]) -> None:
        delisted = getattr(self.ex, "delisted", {})
        for sym, market in list(self.ex.markets.items()):
            if sym in delisted:
                continue
            targets = [k for k in keys if k.symbol in (sym, None)]
            if not targets:
                continue
            liq = market.liquidations(t0, t1)
            if not len(liq["T"]):
                continue
            sec = liq["T"] // 1000
            latest = np.flatnonzero(np.append(sec[1:] != sec[:-1], True))  # last of each second
            spec = market.spec
            for j in latest.tolist():
                q = fmt_units(int(liq["qty"][j]), spec.qty_decimals)
                payload = (
                    f'{{"e":"forceOrder","E":{now},"o":{{"s":"{sym}","S":"{"SELL" if liq["sell"][j] else "BUY"}",'
                    f'"o":"LIMIT","f":"IOC","q":"{q}","p":"{fmt_units(int(liq["price"][j]), spec.price_decimals)}",'
                    f'"ap":"{fmt_units(int(liq["avg"][j]), spec.price_decimals)}","X":"FILLED","l":"{q}",'
                    f'"z":"{q}","T":{int(liq["T"][j])}}}}}'
                )
                for key in targets:
                    self.hub.publish(key, payload)
                    self.messages += 1


# ---------------------------------------------------------------- connections


CONNECTION_WINDOW_S = 300.0  # Binance: 300 connection attempts per 5 minutes per IP


def ws_routes(ex: ExchangeState) -> list[web.RouteDef]:
    counter = {"n": 0}
    opened: dict[str, deque[float]] = {}  # client address -> times of its connection attempts

    def over_connection_limit(addr: str) -> bool:
        now = time.monotonic()
        times = opened.setdefault(addr, deque())
        while times and now - times[0] >= CONNECTION_WINDOW_S:
            times.popleft()
        if len(times) >= ex.config.max_connections_5m:
            return True
        times.append(now)
        return False

    async def handler(request: web.Request) -> web.StreamResponse:
        if over_connection_limit(request.remote or "?"):
            log.info(
                "websocket client over %d connections in 5 minutes: refused", ex.config.max_connections_5m
            )
            return web.Response(
                status=429,
                text='{"code":-1003,"msg":"Too many new connections; only 300 per 5 minutes per IP."}',
                content_type="application/json",
            )
        path = request.path
        combined = path.startswith("/stream")
        raw = request.query.get("streams", "") if combined else path[len("/ws") :].lstrip("/")
        names = [n for n in raw.split("/") if n]
        keys = [parse_stream(n) for n in names]
        if any(k is None for k in keys) or len(keys) > MAX_STREAMS:
            return web.Response(
                status=400,
                text='{"code":-1121,"msg":"Invalid stream name."}',
                content_type="application/json",
            )
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=2.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        counter["n"] += 1
        conn = Connection(
            ws=ws,
            transport=request.transport,
            combined=combined,
            rng=random.Random(ex.config.seed * 1_000_003 + counter["n"]),
            ex=ex,
        )
        ex.hub.subscribe(conn, [k for k in keys if k is not None])
        ex.connections.add(conn)
        loop = asyncio.get_running_loop()
        conn.last_pong = loop.time()
        tasks = [
            asyncio.create_task(_sender(conn)),
            asyncio.create_task(_pinger(conn, ex)),
            asyncio.create_task(_closer(conn, ex)),
        ]
        try:
            await _receiver(conn, ex)
        finally:
            conn.closed = True
            conn.wake.set()
            ex.hub.drop(conn)
            ex.connections.discard(conn)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    return [web.get("/ws", handler), web.get("/ws/{tail:.*}", handler), web.get("/stream", handler)]


async def _sender(conn: Connection) -> None:
    faults = conn.ex.config.faults
    ws = conn.ws
    while not conn.closed:
        await conn.wake.wait()
        conn.wake.clear()
        while conn.out and not conn.closed:
            msg = conn.out.popleft()
            try:
                await ws.send_str(msg)
            except (ConnectionError, RuntimeError):
                conn.closed = True
                return
            conn.sent += 1
            if faults.ws_close_after and conn.sent >= faults.ws_close_after:
                log.info("fault: closing websocket after %d messages", conn.sent)
                conn.abort()
                return
            if faults.ws_stall_after and conn.sent == faults.ws_stall_after:
                # silent but open: pings are still answered, data is dropped until the stall ends
                log.info("fault: websocket stalls after %d messages", conn.sent)
                conn.stalled_until = (
                    time.monotonic() + faults.ws_stall_for if faults.ws_stall_for > 0 else math.inf
                )
                conn.out.clear()


async def _pinger(conn: Connection, ex: ExchangeState) -> None:
    loop = asyncio.get_running_loop()
    interval = ex.config.ping_interval
    while not conn.closed:
        await asyncio.sleep(interval)
        sent_at = loop.time()
        try:
            await conn.ws.ping(str(ex.now_ms()).encode())
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(ex.config.pong_timeout)
        if conn.last_pong < sent_at:
            log.info("websocket client did not answer ping within %.1fs: dropped", ex.config.pong_timeout)
            conn.abort()
            return


async def _closer(conn: Connection, ex: ExchangeState) -> None:
    lifetime = ex.config.max_lifetime
    rand = ex.config.faults.ws_close_random
    if rand > 0:
        at = conn.rng.expovariate(1.0 / rand)
        if at < lifetime:
            await asyncio.sleep(at)
            log.info("fault: closing websocket at a random time (%.2fs)", at)
            conn.abort()
            return
    await asyncio.sleep(lifetime)
    conn.closed = True
    with contextlib.suppress(Exception):
        await conn.ws.close(code=1000, message=b"connection lifetime reached")
    if conn.transport is not None:
        conn.transport.close()


async def _receiver(conn: Connection, ex: ExchangeState) -> None:
    loop = asyncio.get_running_loop()
    window_start = loop.time()
    count = 0
    async for msg in conn.ws:
        if msg.type == WSMsgType.PONG:
            conn.last_pong = loop.time()
            continue
        if msg.type in (WSMsgType.PING, WSMsgType.TEXT, WSMsgType.BINARY):
            now = loop.time()
            if now - window_start >= 1.0:
                window_start, count = now, 0
            count += 1
            if count > ex.config.max_client_messages:
                log.info("websocket client sent more than %d messages in a second: dropped", count - 1)
                await conn.ws.close(code=1008, message=b"too many messages")
                return
        if msg.type == WSMsgType.PING:
            await conn.ws.pong(msg.data)
        elif msg.type == WSMsgType.TEXT:
            _control(conn, ex, msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


def _control(conn: Connection, ex: ExchangeState, text: str) -> None:
    try:
        req = json.loads(text)
    except ValueError:
        conn.reply(
            {"error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}, "id": None}
        )
        return
    if not isinstance(req, dict):
        conn.reply({"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None})
        return
    rid = req.get("id")
    method = req.get("method")
    params = req.get("params", [])
    if not isinstance(rid, (int, str)) and rid is not None:
        conn.reply(
            {
                "error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
                "id": None,
            }
        )
        return
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            conn.reply({"error": {"code": 2, "msg": "Invalid request: invalid params"}, "id": rid})
            return
        keys = [parse_stream(p) for p in params]
        if any(k is None for k in keys):
            bad = params[[k is None for k in keys].index(True)]
            conn.reply(
                {"error": {"code": 2, "msg": f"Invalid request: invalid stream name {bad!r}"}, "id": rid}
            )
            return
        if method == "SUBSCRIBE":
            if len(conn.streams | {k.name for k in keys if k}) > MAX_STREAMS:
                conn.reply({"error": {"code": 2, "msg": "Invalid request: too many streams"}, "id": rid})
                return
            ex.hub.subscribe(conn, [k for k in keys if k is not None])
        else:
            ex.hub.unsubscribe(conn, [k.name for k in keys if k is not None])
        conn.reply({"result": None, "id": rid})
    elif method == "LIST_SUBSCRIPTIONS":
        conn.reply({"result": sorted(conn.streams), "id": rid})
    elif method == "SET_PROPERTY":
        if (
            isinstance(params, list)
            and len(params) == 2
            and params[0] == "combined"
            and isinstance(params[1], bool)
        ):
            conn.combined = params[1]
            conn.reply({"result": None, "id": rid})
        else:
            conn.reply({"error": {"code": 2, "msg": "Invalid request: invalid property"}, "id": rid})
    elif method == "GET_PROPERTY":
        if isinstance(params, list) and params == ["combined"]:
            conn.reply({"result": conn.combined, "id": rid})
        else:
            conn.reply({"error": {"code": 2, "msg": "Invalid request: invalid property"}, "id": rid})
    else:
        conn.reply({"error": {"code": 2, "msg": f"Invalid request: unknown variant {method!r}"}, "id": rid})
