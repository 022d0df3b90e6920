"""REST endpoints against Binance's documented field names and types, with a real HTTP client."""

from __future__ import annotations

from exchange_helpers import FIXED_START, fetch, run

from microstructure.exchange import ExchangeThread

AGG_KEYS = {"a": int, "p": str, "q": str, "f": int, "l": int, "T": int, "m": bool}


def test_ping_time_exchange_info(exchange) -> None:
    status, headers, body = fetch(exchange, "/fapi/v1/ping")
    assert (status, body) == (200, {})
    assert int(headers["X-MBX-USED-WEIGHT-1M"]) >= 1
    _, _, body = fetch(exchange, "/fapi/v1/time")
    assert set(body) == {"serverTime"} and abs(body["serverTime"] - exchange.now_ms()) < 5_000
    _, _, info = fetch(exchange, "/fapi/v1/exchangeInfo")
    assert info["timezone"] == "UTC"
    assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400} in info[
        "rateLimits"
    ]
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert btc["contractType"] == "PERPETUAL" and btc["status"] == "TRADING"
    assert btc["pricePrecision"] == 2 and btc["quantityPrecision"] == 3
    pf = next(f for f in btc["filters"] if f["filterType"] == "PRICE_FILTER")
    lot = next(f for f in btc["filters"] if f["filterType"] == "LOT_SIZE")
    assert pf["tickSize"] == "0.10" and lot["stepSize"] == "0.001"
    assert {s["symbol"] for s in info["symbols"]} == {"BTCUSDT", "ETHUSDT"}


def test_agg_trades_fields_paging_and_windows(exchange) -> None:
    status, _, rows = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT")
    assert status == 200 and len(rows) == 500  # default limit
    for row in rows[:50]:
        assert set(row) == set(AGG_KEYS)
        assert all(isinstance(row[k], t) for k, t in AGG_KEYS.items())
        assert row["p"].count(".") == 1 and len(row["p"].split(".")[1]) == 2
        assert len(row["q"].split(".")[1]) == 3
    assert [r["a"] for r in rows] == list(range(rows[0]["a"], rows[0]["a"] + 500))
    assert all(r["T"] <= exchange.now_ms() for r in rows)
    # fromId pages follow each other without gaps; limit caps at 1000
    first = exchange.markets["BTCUSDT"].first_id()
    _, _, p1 = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=first, limit=5000)
    assert len(p1) == 1000 and p1[0]["a"] == first
    _, _, p2 = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=p1[-1]["a"] + 1, limit=3)
    assert [r["a"] for r in p2] == [p1[-1]["a"] + 1 + i for i in range(3)]
    assert p2[0]["f"] == p1[-1]["l"] + 1
    # a time window under one hour
    t0 = p1[100]["T"]
    _, _, w = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=t0, endTime=t0 + 600_000)
    assert w and all(t0 <= r["T"] <= t0 + 600_000 for r in w) and w[0]["a"] <= p1[100]["a"]
    status, _, err = fetch(
        exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=t0, endTime=t0 + 3_600_000
    )
    assert status == 400 and err["code"] == -1127 and isinstance(err["msg"], str)
    status, _, err = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=first, startTime=t0)
    assert status == 400 and err["code"] == -1128


def test_errors_in_binance_style(exchange) -> None:
    status, _, err = fetch(exchange, "/fapi/v1/aggTrades", symbol="NOPEUSDT")
    assert status == 400 and err == {"code": -1121, "msg": "Invalid symbol."}
    status, _, err = fetch(exchange, "/fapi/v1/aggTrades")
    assert status == 400 and err["code"] == -1102
    status, _, err = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId="abc")
    assert status == 400 and err["code"] == -1100
    status, _, err = fetch(exchange, "/fapi/v1/depth", symbol="BTCUSDT", limit=7)
    assert status == 400 and err["code"] == -1130


def test_depth(exchange) -> None:
    for limit, weight in ((5, 2), (50, 2), (100, 5), (500, 10), (1000, 20)):
        before = int(fetch(exchange, "/fapi/v1/ping")[1]["X-MBX-USED-WEIGHT-1M"])
        status, headers, book = fetch(exchange, "/fapi/v1/depth", symbol="BTCUSDT", limit=limit)
        assert status == 200
        assert int(headers["X-MBX-USED-WEIGHT-1M"]) == before + weight
        assert set(book) == {"lastUpdateId", "E", "T", "bids", "asks"}
        assert isinstance(book["lastUpdateId"], int) and book["T"] <= book["E"]
        assert len(book["bids"]) == limit and len(book["asks"]) == limit
        assert all(isinstance(p, str) and isinstance(q, str) for p, q in book["bids"] + book["asks"])
        bids = [float(p) for p, _ in book["bids"]]
        asks = [float(p) for p, _ in book["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    # consistent with the last trade: it printed at (or within a few ticks of) the touch
    _, _, last = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1)
    _, _, book = fetch(exchange, "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    mid = (float(book["bids"][0][0]) + float(book["asks"][0][0])) / 2
    assert abs(float(last[0]["p"]) / mid - 1) < 0.002


def test_premium_index_funding_open_interest(exchange) -> None:
    _, _, p = fetch(exchange, "/fapi/v1/premiumIndex", symbol="BTCUSDT")
    assert set(p) == {
        "symbol", "markPrice", "indexPrice", "estimatedSettlePrice", "lastFundingRate", "interestRate",
        "nextFundingTime", "time",
    }  # fmt: skip
    assert all(isinstance(p[k], str) for k in ("markPrice", "indexPrice", "lastFundingRate", "interestRate"))
    assert p["nextFundingTime"] % (8 * 3_600_000) == 0 and p["nextFundingTime"] > p["time"]
    _, _, last = fetch(exchange, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1)
    assert abs(float(p["markPrice"]) / float(last[0]["p"]) - 1) < 0.002
    status, _headers, everything = fetch(exchange, "/fapi/v1/premiumIndex")
    assert isinstance(everything, list) and len(everything) == 2
    _, _, fr = fetch(exchange, "/fapi/v1/fundingRate", symbol="BTCUSDT", limit=1000)
    # 2 history days + today until 12:00 -> settlements at 8-hour marks
    assert len(fr) == 7 and all(r["fundingTime"] % (8 * 3_600_000) == 0 for r in fr)
    assert set(fr[0]) == {"symbol", "fundingTime", "fundingRate", "markPrice"}
    assert isinstance(fr[0]["fundingRate"], str) and abs(float(fr[0]["fundingRate"])) <= 0.0075
    _, _, fr2 = fetch(
        exchange, "/fapi/v1/fundingRate", symbol="BTCUSDT", startTime=fr[2]["fundingTime"], limit=2
    )
    assert fr2 == fr[2:4]
    _, _, oi = fetch(exchange, "/fapi/v1/openInterest", symbol="BTCUSDT")
    assert set(oi) == {"openInterest", "symbol", "time"} and float(oi["openInterest"]) > 0
    _, _, hist = fetch(exchange, "/futures/data/openInterestHist", symbol="BTCUSDT", period="5m", limit=12)
    assert len(hist) == 12
    assert set(hist[0]) == {"symbol", "sumOpenInterest", "sumOpenInterestValue", "timestamp"}
    assert [h["timestamp"] for h in hist] == [hist[0]["timestamp"] + 300_000 * i for i in range(12)]
    status, _, err = fetch(exchange, "/futures/data/openInterestHist", symbol="BTCUSDT", period="7m")
    assert status == 400 and err["code"] == -1130


def test_weights_429_then_418(tmp_cfg) -> None:
    cfg = tmp_cfg(weight_limit=100, ban_seconds=30, clock_start=FIXED_START, history_days=1)
    with ExchangeThread(cfg) as ex:
        used = []
        for _ in range(5):
            status, headers, _ = fetch(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1)
            assert status == 200
            used.append(int(headers["X-MBX-USED-WEIGHT-1M"]))
        assert used == [20, 40, 60, 80, 100]
        status, headers, body = fetch(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1)
        assert status == 429 and body["code"] == -1003
        assert 1 <= int(headers["Retry-After"]) <= 60
        # ignoring the 429 gets the address banned
        status, headers, body = fetch(ex, "/fapi/v1/ping")
        assert status == 418 and body["code"] == -1003 and "banned" in body["msg"]
        assert 25 <= int(headers["Retry-After"]) <= 30
        assert fetch(ex, "/fapi/v1/time")[0] == 418


def test_request_from_two_clients_concurrently(exchange) -> None:
    import asyncio

    import aiohttp

    async def go() -> list[int]:
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> int:
                async with s.get(f"{exchange.base_url}/fapi/v1/aggTrades", params={"symbol": "ETHUSDT"}) as r:
                    await r.json()
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(8)))

    assert run(go()) == [200] * 8
