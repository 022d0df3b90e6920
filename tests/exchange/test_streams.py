"""Websocket streams with the `websockets` library (and aiohttp where a client must misbehave)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import websockets
from exchange_helpers import fetch, run
from websockets.asyncio.client import connect

from microstructure.exchange import ExchangeThread
from microstructure.exchange.streams import StreamKey

AGG_EVENT = {
    "e": str,
    "E": int,
    "s": str,
    "a": int,
    "p": str,
    "q": str,
    "f": int,
    "l": int,
    "T": int,
    "m": bool,
}
DEPTH_EVENT = {"e", "E", "T", "s", "U", "u", "pu", "b", "a"}


async def collect(ws, n: int, timeout: float = 10.0) -> list[dict]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out.append(json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic())))
    return out


def test_raw_agg_trade_stream(exchange) -> None:
    async def go() -> list[dict]:
        async with connect(exchange.ws_url + "/ws/btcusdt@aggTrade") as ws:
            return await collect(ws, 20)

    events = run(go())
    for ev in events:
        assert set(ev) == set(AGG_EVENT) and all(isinstance(ev[k], t) for k, t in AGG_EVENT.items())
        assert ev["e"] == "aggTrade" and ev["s"] == "BTCUSDT" and ev["E"] >= ev["T"]
    ids = [e["a"] for e in events]
    assert ids == list(range(ids[0], ids[0] + 20))
    assert all(b["f"] == a["l"] + 1 for a, b in itertools.pairwise(events))


def test_combined_streams_wrap_events(exchange) -> None:
    async def go() -> list[dict]:
        url = exchange.ws_url + "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade/btcusdt@markPrice@1s"
        async with connect(url) as ws:
            return await collect(ws, 60)

    events = run(go())
    assert all(set(e) == {"stream", "data"} for e in events)
    streams = {e["stream"] for e in events}
    assert {"btcusdt@aggTrade", "ethusdt@aggTrade"} <= streams
    for e in events:
        if e["stream"].endswith("@aggTrade"):
            assert e["data"]["s"] == e["stream"].split("@")[0].upper()


def test_subscribe_unsubscribe_list(exchange) -> None:
    async def go() -> tuple[list, list, dict]:
        async with connect(exchange.ws_url + "/ws") as ws:
            await ws.send(
                json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade", "btcusdt@depth"], "id": 1})
            )
            replies, events = [], []
            while len(replies) < 1:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                (replies if "id" in msg else events).append(msg)
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
            await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@depth"], "id": 3}))
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 4}))
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nonsense"], "id": 5}))
            while len(replies) < 5:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                (replies if "id" in msg else events).append(msg)
            events += await collect(ws, 5)
            return replies, events, {}

    replies, events, _ = run(go())
    by_id = {r["id"]: r for r in replies}
    assert by_id[1] == {"result": None, "id": 1}
    assert by_id[2] == {"result": ["btcusdt@depth", "ethusdt@aggTrade"], "id": 2}
    assert by_id[3] == {"result": None, "id": 3}
    assert by_id[4] == {"result": ["ethusdt@aggTrade"], "id": 4}
    assert by_id[5]["error"]["code"] == 2
    # raw endpoint: unwrapped events
    assert any(e.get("e") == "aggTrade" and e["s"] == "ETHUSDT" for e in events)


def test_partial_depth_and_mark_price(exchange) -> None:
    async def go() -> list[dict]:
        url = exchange.ws_url + "/stream?streams=btcusdt@depth20@500ms/btcusdt@markPrice@1s"
        async with connect(url) as ws:
            got: dict[str, list] = {}
            while (
                len(got.get("btcusdt@markPrice@1s", [])) < 2 or len(got.get("btcusdt@depth20@500ms", [])) < 2
            ):
                e = json.loads(await asyncio.wait_for(ws.recv(), 5))
                got.setdefault(e["stream"], []).append(e["data"])
            return got["btcusdt@depth20@500ms"] + got["btcusdt@markPrice@1s"]

    events = run(go())
    depth = [e for e in events if e["e"] == "depthUpdate"]
    mark = [e for e in events if e["e"] == "markPriceUpdate"]
    for d in depth:
        assert set(d) == DEPTH_EVENT and len(d["b"]) == 20 and len(d["a"]) == 20
        assert d["U"] <= d["u"] and d["pu"] < d["U"] and d["T"] % 500 == 0
        assert float(d["b"][0][0]) < float(d["a"][0][0])
    for m in mark:
        assert set(m) == {"e", "E", "s", "p", "i", "P", "r", "T"}
        assert all(isinstance(m[k], str) for k in "piPr") and m["T"] % (8 * 3_600_000) == 0


def test_diff_depth_builds_the_same_book_as_rest(exchange) -> None:
    """Binance's local-book procedure on the @100ms diff stream ends equal to a later REST snapshot."""

    async def go() -> tuple[dict, dict, dict]:
        async with aiohttp.ClientSession() as s, connect(exchange.ws_url + "/ws/btcusdt@depth@100ms") as ws:
            buffered = await collect(ws, 3)
            async with s.get(
                exchange.base_url + "/fapi/v1/depth", params={"symbol": "BTCUSDT", "limit": 1000}
            ) as r:
                snap = await r.json()
            bids = {p: q for p, q in snap["bids"]}
            asks = {p: q for p, q in snap["asks"]}
            last_u = snap["lastUpdateId"]
            applied = 0
            prev_u = None
            events = buffered + await collect(ws, 12)
            for ev in events:
                if ev["u"] < last_u:
                    continue
                if prev_u is None:
                    assert ev["U"] <= last_u <= ev["u"]
                else:
                    assert ev["pu"] == prev_u
                prev_u = ev["u"]
                for side, book in (("b", bids), ("a", asks)):
                    for p, q in ev[side]:
                        if float(q) == 0:
                            book.pop(p, None)
                        else:
                            book[p] = q
                applied += 1
            assert applied >= 10
            return bids, asks, {"u": prev_u, "T": events[-1]["T"]}

    bids, asks, last = run(go())
    # the REST snapshot at the same grid step equals the book we maintained (top 1000 both sides)
    from microstructure.exchange.book import book_at
    from microstructure.exchange.rest import fmt_units

    market = exchange.markets["BTCUSDT"]
    ref = book_at(market, last["T"] // 50)
    assert ref.update_id == last["u"]
    want_b = {
        fmt_units(p, 2): fmt_units(q, 3)
        for p, q in zip(ref.bids.prices.tolist(), ref.bids.qty.tolist(), strict=True)
    }
    want_a = {
        fmt_units(p, 2): fmt_units(q, 3)
        for p, q in zip(ref.asks.prices.tolist(), ref.asks.qty.tolist(), strict=True)
    }
    best_bid = max(want_b, key=float)
    top_b = {p: q for p, q in bids.items() if float(p) > float(best_bid) - 50}
    assert top_b == {p: q for p, q in want_b.items() if float(p) > float(best_bid) - 50}
    best_ask = min(want_a, key=float)
    top_a = {p: q for p, q in asks.items() if float(p) < float(best_ask) + 50}
    assert top_a == {p: q for p, q in want_a.items() if float(p) < float(best_ask) + 50}


def test_force_order_events(exchange) -> None:
    market = exchange.markets["BTCUSDT"]
    liq = market.liquidations(market.origin_ms, market.origin_ms + 86_400_000)
    assert len(liq["T"]) > 0
    t0 = int(liq["T"][0]) // 1000 * 1000

    async def go() -> list[dict]:
        url = exchange.ws_url + "/stream?streams=btcusdt@forceOrder/!forceOrder@arr"
        async with connect(url) as ws:
            await asyncio.sleep(0.2)
            keys = [
                StreamKey("btcusdt@forceOrder", "BTCUSDT", "forceOrder"),
                StreamKey("!forceOrder@arr", None, "forceOrderAll"),
            ]
            exchange_thread_call(
                exchange, lambda: exchange.producer.force_orders(t0, t0 + 1000, exchange.now_ms(), keys)
            )
            return await collect(ws, 2)

    events = run(go())
    assert {e["stream"] for e in events} == {"btcusdt@forceOrder", "!forceOrder@arr"}
    for e in events:
        d = e["data"]
        assert d["e"] == "forceOrder" and set(d) == {"e", "E", "o"}
        o = d["o"]
        assert set(o) == {"s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"}
        assert o["s"] == "BTCUSDT" and o["S"] in ("BUY", "SELL") and o["X"] == "FILLED"
        assert all(isinstance(o[k], str) for k in ("q", "p", "ap", "l", "z"))
        assert t0 <= o["T"] < t0 + 1000


def exchange_thread_call(exchange, fn) -> None:
    loop = exchange._producer_task.get_loop()
    loop.call_soon_threadsafe(fn)


def test_server_pings_drop_silent_clients_and_lifetime(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, live_rate=20.0, ping_interval=0.3, pong_timeout=0.3, max_lifetime=2.0)
    with ExchangeThread(cfg) as ex:

        async def silent() -> tuple[int, float]:
            # aiohttp with autoping=False never answers the server's pings
            pings = 0
            t0 = time.monotonic()
            async with (
                aiohttp.ClientSession() as s,
                s.ws_connect(ex.ws_url + "/ws/btcusdt@aggTrade", autoping=False) as ws,
            ):
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 5)
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                    elif msg.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        return pings, time.monotonic() - t0

        async def polite() -> tuple[int | None, float]:
            # websockets answers pings: it stays until the lifetime ends, then gets a normal close
            t0 = time.monotonic()
            async with connect(ex.ws_url + "/ws/btcusdt@aggTrade") as ws:
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                except websockets.ConnectionClosed as exc:
                    return (exc.rcvd.code if exc.rcvd else None), time.monotonic() - t0

        async def both():
            return await asyncio.gather(silent(), polite())

        (pings, silent_for), (code, polite_for) = run(both())
        assert pings == 1 and silent_for < 1.5
        assert code == 1000 and 1.8 < polite_for < 4.0


def test_rest_and_stream_clock_agree(exchange) -> None:
    _, _, t = fetch(exchange, "/fapi/v1/time")
    assert abs(t["serverTime"] - exchange.now_ms()) < 2_000


def test_client_sending_too_fast_is_dropped(exchange) -> None:
    async def go() -> int | None:
        async with connect(exchange.ws_url + "/ws") as ws:
            try:
                for i in range(15):
                    await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return None

    assert run(go()) == 1008


def test_invalid_stream_name_in_url_is_refused(exchange) -> None:
    async def go() -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.get(exchange.ws_url.replace("ws://", "http://") + "/ws/nonsense") as r,
        ):
            return r.status

    assert run(go()) == 400
