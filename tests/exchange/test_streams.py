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


def test_diff_depth_500ms_fields_chain_and_cadence(exchange) -> None:
    """@depth@500ms next to @depth@100ms: Binance's fields and types, an unbroken U/u/pu chain, one
    event per 500 ms (five @100ms events in the same time), each diff turning the book at T - 500 ms
    into the book at T."""
    from microstructure.exchange.book import book_at
    from microstructure.exchange.rest import fmt_units

    async def go() -> dict[str, list[tuple[float, dict]]]:
        url = exchange.ws_url + "/stream?streams=btcusdt@depth@500ms/btcusdt@depth@100ms"
        got: dict[str, list[tuple[float, dict]]] = {"btcusdt@depth@500ms": [], "btcusdt@depth@100ms": []}
        async with connect(url) as ws:
            while len(got["btcusdt@depth@500ms"]) < 8:
                e = json.loads(await asyncio.wait_for(ws.recv(), 5))
                got[e["stream"]].append((time.monotonic(), e["data"]))
        return got

    got = run(go())
    slow = [d for _, d in got["btcusdt@depth@500ms"]]
    fast = [d for _, d in got["btcusdt@depth@100ms"]]
    for d in slow + fast:
        assert set(d) == DEPTH_EVENT and d["e"] == "depthUpdate" and d["s"] == "BTCUSDT"
        assert all(isinstance(d[k], int) for k in ("E", "T", "U", "u", "pu"))
        assert d["pu"] < d["U"] <= d["u"] and d["E"] >= d["T"]
        for side in ("b", "a"):
            assert isinstance(d[side], list)
            assert all(len(lv) == 2 and all(isinstance(x, str) for x in lv) for lv in d[side])
    for events, step in ((slow, 500), (fast, 100)):
        assert all(d["T"] % step == 0 for d in events)
        gaps = [b["T"] - a["T"] for a, b in itertools.pairwise(events)]
        assert all(g > 0 and g % step == 0 for g in gaps)
        assert sorted(gaps)[len(gaps) // 2] == step  # the cadence (a late producer tick may skip one)
        # Binance's rule: each event's pu is the previous event's u
        assert all(b["pu"] == a["u"] for a, b in itertools.pairwise(events))
    # in the same span of time the @100ms stream sends five times as many events
    t_first, t_last = slow[0]["T"], slow[-1]["T"]
    n_fast = sum(t_first < d["T"] <= t_last for d in fast)
    assert 4 * (len(slow) - 1) <= n_fast <= 5 * (len(slow) - 1)
    arrivals = [t for t, _ in got["btcusdt@depth@500ms"]]
    wall_gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert 0.3 < wall_gaps[len(wall_gaps) // 2] < 0.8
    # each 500 ms diff applied to the book 500 ms earlier gives the book at T (all 1000 levels)
    market = exchange.markets["BTCUSDT"]
    pd, qd = market.spec.price_decimals, market.spec.qty_decimals

    def side_dict(side) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {
            fmt_units(p, pd): fmt_units(q, qd)
            for p, q in zip(side.prices.tolist(), side.qty.tolist(), strict=True)
        }

    for d in slow:
        before, after = book_at(market, (d["T"] - 500) // 50), book_at(market, d["T"] // 50)
        assert d["pu"] == before.update_id and d["u"] == after.update_id
        for key, b_side, a_side in (("b", before.bids, after.bids), ("a", before.asks, after.asks)):
            book = side_dict(b_side)
            for p, q in d[key]:
                if float(q) == 0:
                    # a level may have come and gone within the event: removing a level the book
                    # does not hold is normal (Binance's documentation says so too)
                    book.pop(p, None)
                else:
                    book[p] = q
            assert book == side_dict(a_side)
        assert d["b"] or d["a"]


def test_unsubscribe_stops_events_and_subscribe_starts_them(exchange) -> None:
    """After the UNSUBSCRIBE reply no event of that stream arrives while another stream keeps flowing;
    after SUBSCRIBE it flows again, and nothing flows before the first SUBSCRIBE."""

    async def go() -> list[tuple[str, dict]]:
        log: list[tuple[str, dict]] = []

        async def until(pred, seconds: float) -> None:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    msg = json.loads(
                        await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.01))
                    )
                except TimeoutError:
                    break
                log.append(("reply", msg) if "id" in msg else ("event", msg))
                if pred(msg):
                    return

        async with connect(exchange.ws_url + "/ws") as ws:
            await until(lambda m: False, 0.6)  # no streams yet: silence
            log.append(("mark", {"at": "subscribe"}))
            await ws.send(
                json.dumps(
                    {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "ethusdt@aggTrade"], "id": 1}
                )
            )
            await until(lambda m: m.get("id") == 1, 5)
            await until(lambda m: False, 0.8)
            await ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 2}))
            await until(lambda m: m.get("id") == 2, 5)
            log.append(("mark", {"at": "unsubscribed"}))
            await until(lambda m: False, 1.0)
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 3}))
            await until(lambda m: m.get("id") == 3, 5)
            log.append(("mark", {"at": "resubscribed"}))
            await until(lambda m: False, 0.8)
        return log

    log = run(go())
    marks = [i for i, (kind, _) in enumerate(log) if kind == "mark"]
    before, during, gap, after = (
        log[: marks[0]],
        log[marks[0] : marks[1]],
        log[marks[1] : marks[2]],
        log[marks[2] :],
    )

    def trades(part, sym):  # type: ignore[no-untyped-def]
        return [m for kind, m in part if kind == "event" and m.get("e") == "aggTrade" and m["s"] == sym]

    assert before == []
    assert len(trades(during, "BTCUSDT")) > 10 and len(trades(during, "ETHUSDT")) > 10
    assert trades(gap, "BTCUSDT") == [] and len(trades(gap, "ETHUSDT")) > 20  # the connection lives on
    assert len(trades(after, "BTCUSDT")) > 10
    # BTC resumes at the live trade, later than where it stopped
    assert trades(after, "BTCUSDT")[0]["a"] > trades(during, "BTCUSDT")[-1]["a"] + 10
    assert [m["result"] for kind, m in log if kind == "reply"] == [None, None, None]


FORCE_ORDER = {
    "s": str,
    "S": str,
    "o": str,
    "f": str,
    "q": str,
    "p": str,
    "ap": str,
    "X": str,
    "l": str,
    "z": str,
    "T": int,
}


def last_per_second(liq: dict, lo: int, hi: int) -> dict[int, int]:
    """Index of the latest liquidation of each second in [lo, hi) (Binance sends only that one)."""
    out: dict[int, int] = {}
    for j, t in enumerate(liq["T"].tolist()):
        if lo <= t < hi and (t // 1000 not in out or t >= liq["T"][out[t // 1000]]):
            out[t // 1000] = j
    return out


def test_force_orders_from_the_market_clock_sampled_per_second(tmp_cfg) -> None:
    """Liquidations reach @forceOrder and !forceOrder@arr by the producer's normal tick, with Binance's
    fields, and at most the latest one per symbol per second."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from microstructure.exchange import LocalExchange

    # the market is deterministic: find a busy few seconds of the day (several seconds with
    # liquidations, one second holding more than one), then start the exchange just before them
    day = datetime(2024, 3, 6, tzinfo=UTC)
    d0 = int(day.timestamp() * 1000)
    probe = LocalExchange(tmp_cfg(history_days=1, clock_start=day))
    probe.prepare()
    T = probe.markets["BTCUSDT"].liquidations(d0, d0 + 86_400_000)["T"]
    window = 5_000
    best = max(
        (len(set((w // 1000).tolist())), int(t))
        for t in T.tolist()
        if len(w := T[(t <= T) & (t + window > T)]) > len(set((w // 1000).tolist()))
    )
    assert best[0] >= 3
    w0 = best[1] // 1000 * 1000
    w1 = w0 + window + 1000
    cfg = tmp_cfg(history_days=1, clock_start=datetime.fromtimestamp((w0 - 3_000) / 1000, tz=UTC))

    with ExchangeThread(cfg) as ex:

        async def go() -> tuple[int, list[tuple[str, dict]]]:
            url = ex.ws_url + "/stream?streams=btcusdt@forceOrder/!forceOrder@arr"
            got = []
            async with connect(url) as ws:
                subscribed = ex.now_ms()
                while ex.now_ms() < w1 + 1_500:
                    try:
                        e = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        continue
                    got.append((e["stream"], e["data"]))
            return subscribed, got

        subscribed, got = run(go())
        lo = (subscribed // 1000 + 1) * 1000  # seconds wholly after the subscription
        assert lo <= w0, "the exchange started too late for the busy window"
        for _stream, d in got:
            assert set(d) == {"e", "E", "o"} and d["e"] == "forceOrder" and isinstance(d["E"], int)
            o = d["o"]
            assert set(o) == set(FORCE_ORDER) and all(isinstance(o[k], t) for k, t in FORCE_ORDER.items())
            assert o["S"] in ("BUY", "SELL") and (o["o"], o["f"], o["X"]) == ("LIMIT", "IOC", "FILLED")
            assert o["q"] == o["l"] == o["z"] and d["E"] >= o["T"]
        for stream in ("btcusdt@forceOrder", "!forceOrder@arr"):
            per_second: dict[tuple[str, int], int] = {}
            for s, d in got:
                if s == stream:
                    key = (d["o"]["s"], d["o"]["T"] // 1000)
                    per_second[key] = per_second.get(key, 0) + 1
            assert per_second and max(per_second.values()) == 1  # at most one per symbol per second
        assert {d["o"]["s"] for s, d in got if s == "btcusdt@forceOrder"} == {"BTCUSDT"}

        # exactly the latest liquidation of each second of the market, in [lo, w1)
        sampled_out = 0
        for sym in ("BTCUSDT", "ETHUSDT"):
            market = ex.markets[sym]
            liq = market.liquidations(lo, w1)
            sampled_out += len(liq["T"]) - len(last_per_second(liq, lo, w1))
            pd, qd = market.spec.price_decimals, market.spec.qty_decimals
            want = [
                {
                    "T": int(liq["T"][j]),
                    "S": "SELL" if liq["sell"][j] else "BUY",
                    "q": Decimal(int(liq["qty"][j])).scaleb(-qd),
                    "p": Decimal(int(liq["price"][j])).scaleb(-pd),
                    "ap": Decimal(int(liq["avg"][j])).scaleb(-pd),
                }
                for j in sorted(last_per_second(liq, lo, w1).values())
            ]
            streams = ["!forceOrder@arr"] + (["btcusdt@forceOrder"] if sym == "BTCUSDT" else [])
            for stream in streams:
                seen = [
                    {"T": d["o"]["T"], "S": d["o"]["S"], **{k: Decimal(d["o"][k]) for k in ("q", "p", "ap")}}
                    for s, d in got
                    if s == stream and d["o"]["s"] == sym and lo <= d["o"]["T"] < w1
                ]
                assert seen == want, (sym, stream)
            if sym == "BTCUSDT":
                assert len(want) >= 3
        assert sampled_out >= 1  # the market had more than one in some second: only the latest was sent


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
