"""BinanceRest against the local exchange over real HTTP: weights, 429, 418, Binance errors, retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from ih_helpers import generator_trades

from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import LocalExchange
from microstructure.ingest.binance.rest import (
    HIGH,
    LOW,
    BinanceError,
    BinanceRest,
    IpBanned,
    RetriesExhausted,
    depth_weight,
)


def config(cache: Path, **kw: object) -> ExchangeConfig:
    kw.setdefault("history_days", 1)
    kw.setdefault("trades_per_day", 20_000)
    return ExchangeConfig(cache_dir=cache, **kw)  # type: ignore[arg-type]


async def raw_get(
    session: aiohttp.ClientSession, url: str, **params: object
) -> tuple[int, dict[str, str], str]:
    async with session.get(url, params={k: str(v) for k, v in params.items()}) as r:
        return r.status, dict(r.headers), await r.text()


def test_pages_match_the_generator_and_other_endpoints_parse(exchange_cache: Path) -> None:
    async def main() -> None:
        async with LocalExchange(config(exchange_cache)) as ex, BinanceRest(ex.base_url) as rest:
            now = await rest.server_time()
            assert abs(now - ex.now_ms()) < 2_000
            first = ex.markets["BTCUSDT"].first_id()
            page = await rest.agg_trades("BTCUSDT", from_id=first, limit=1000)
            assert page.num_rows == 1000
            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, now)
            got = page.to_pydict()
            for col in (
                "agg_id",
                "ts_ms",
                "price",
                "quantity",
                "first_trade_id",
                "last_trade_id",
                "is_buyer_maker",
            ):
                assert got[col] == ref[col][:1000], col
            assert got["recv_ms"] == [None] * 1000
            t0 = ref["ts_ms"][10]
            window = await rest.agg_trades("BTCUSDT", start_ms=t0, end_ms=t0 + 60_000, limit=5)
            assert window.column("agg_id").to_pylist() == ref["agg_id"][10:15]
            assert set(await rest.symbols()) == {"BTCUSDT"}
            book = await rest.depth("BTCUSDT", 20)
            assert len(book["bids"]) == 20 and float(book["bids"][0][0]) < float(book["asks"][0][0])
            assert (await rest.premium_index("BTCUSDT"))["symbol"] == "BTCUSDT"
            assert "openInterest" in await rest.open_interest("BTCUSDT")
            assert len(await rest.open_interest_hist("BTCUSDT", "5m", limit=3)) == 3
            assert all(r["symbol"] == "BTCUSDT" for r in await rest.funding_rate("BTCUSDT", limit=3))
            # weights as documented: time 1, aggTrades 20 x2, exchangeInfo 1, depth(20) 2, 4 x 1
            assert rest.stats.weight_used == 1 + 40 + 1 + 2 + 4
            assert rest.stats.last_used_weight_1m >= rest.stats.weight_used - 1
            assert [depth_weight(n) for n in (5, 50, 100, 500, 1000)] == [2, 2, 5, 10, 20]

    asyncio.run(main())


def test_weight_budget_follows_the_used_weight_header(exchange_cache: Path) -> None:
    """Another client of the same IP already used 40: the header tells, and the budget of 100 holds."""
    start = datetime(2024, 3, 5, 12, 0, 54, tzinfo=UTC)  # the server's minute ends ~6 s after start

    async def main() -> None:
        async with LocalExchange(config(exchange_cache, clock_start=start)) as ex:
            async with aiohttp.ClientSession() as s:
                for _ in range(2):
                    status, _, _ = await raw_get(
                        s, ex.base_url + "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1
                    )
                    assert status == 200
            async with BinanceRest(ex.base_url, weight_budget_per_min=100) as rest:
                await rest.server_time()  # weight 1: the server now counts 41
                first = ex.markets["BTCUSDT"].first_id()
                seen_minutes = []
                ids: list[int] = []
                for i in range(6):
                    page = await rest.agg_trades("BTCUSDT", from_id=first + 100 * i, limit=100)
                    ids += page.column("agg_id").to_pylist()
                    seen_minutes.append(rest.server_now_ms() // 60_000)
                # 41 + 20 + 20 = 81 fits, + 20 = 101 would not: two pages in the first minute, then a wait.
                assert rest.stats.max_used_weight_1m == 81
                assert rest.stats.budget_waits == 1
                assert rest.stats.rate_limited == 0
                assert seen_minutes[1] + 1 == seen_minutes[2] == seen_minutes[5]
                assert ids == list(range(first, first + 600))
                assert ex.limiter.used("127.0.0.1", ex.now_ms()) == 80  # 4 pages in the new minute

    asyncio.run(main())


def test_injected_429s_are_waited_out_and_the_pages_finish(exchange_cache: Path) -> None:
    """The client alone under injected 429s (they never reach the exchange's limiter, so no ban is
    possible here): the acceptance run with a reachable 418 is test_ih_historical's 429-storm test."""

    async def main() -> None:
        cfg = config(exchange_cache, faults=FaultConfig(rest_429_rate=0.35))
        async with LocalExchange(cfg) as ex, BinanceRest(ex.base_url) as rest:
            first = ex.markets["BTCUSDT"].first_id()
            t0 = time.monotonic()
            ids: list[int] = []
            for i in range(8):
                page = await rest.agg_trades("BTCUSDT", from_id=first + 200 * i, limit=200)
                ids += page.column("agg_id").to_pylist()
            elapsed = time.monotonic() - t0
            assert ids == list(range(first, first + 1600))
            assert rest.stats.rate_limited >= 1
            assert rest.stats.retries == rest.stats.rate_limited
            assert rest.stats.requests == 8 + rest.stats.rate_limited
            assert elapsed >= rest.stats.rate_limited * 1.0  # Retry-After: 1 honoured each time

    asyncio.run(main())


def test_real_429_waits_for_the_next_minute_instead_of_getting_banned(exchange_cache: Path) -> None:
    """The server allows 60/min but the client was told 1200: the 429's Retry-After saves it from a 418."""
    start = datetime(2024, 3, 5, 12, 0, 55, tzinfo=UTC)

    async def main() -> None:
        cfg = config(exchange_cache, clock_start=start, weight_limit=60, ban_seconds=600)
        async with LocalExchange(cfg) as ex, BinanceRest(ex.base_url, weight_budget_per_min=1200) as rest:
            first = ex.markets["BTCUSDT"].first_id()
            ids: list[int] = []
            for i in range(5):
                page = await rest.agg_trades("BTCUSDT", from_id=first + 10 * i, limit=10)
                ids += page.column("agg_id").to_pylist()
            assert ids == list(range(first, first + 50))
            assert rest.stats.rate_limited == 1
            assert all(u.banned_until == 0 for u in ex.limiter.clients.values())

    asyncio.run(main())


def test_418_raises_ip_banned_with_the_length_and_sends_nothing_more(exchange_cache: Path) -> None:
    async def main() -> None:
        cfg = config(exchange_cache, weight_limit=40, ban_seconds=300)
        async with LocalExchange(cfg) as ex:
            async with aiohttp.ClientSession() as s:  # a careless client of the same IP gets it banned
                statuses = [
                    (await raw_get(s, ex.base_url + "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1))[0]
                    for _ in range(4)
                ]
            assert statuses == [200, 200, 429, 418]
            async with BinanceRest(ex.base_url) as rest:
                with pytest.raises(IpBanned) as info:
                    await rest.agg_trades("BTCUSDT", limit=1)
                msg = str(info.value)
                assert "418" in msg and "for 300 s" in msg and "banned" in msg
                assert 299 <= info.value.retry_after <= 300
                sent = rest.stats.requests
                with pytest.raises(IpBanned):
                    await rest.exchange_info()
                assert rest.stats.requests == sent == 1

    asyncio.run(main())


def test_invalid_symbol_is_a_binance_error(exchange_cache: Path) -> None:
    async def main() -> None:
        async with LocalExchange(config(exchange_cache)) as ex, BinanceRest(ex.base_url) as rest:
            with pytest.raises(BinanceError) as info:
                await rest.agg_trades("NOPEUSDT", limit=1)
            assert (
                info.value.code == -1121 and info.value.msg == "Invalid symbol." and info.value.status == 400
            )
            assert "-1121" in str(info.value)
            with pytest.raises(BinanceError) as info2:
                await rest.request("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "limit": 0}, weight=20)
            assert info2.value.code == -1130
            assert rest.stats.retries == 0

    asyncio.run(main())


def test_5xx_and_timeouts_are_retried_then_given_up() -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=503, text="busy")
        if calls["n"] == 2:
            await asyncio.sleep(1.0)  # longer than the client's timeout
            return web.Response(text="too late")
        return web.json_response({"serverTime": 1}, headers={"X-MBX-USED-WEIGHT-1M": "7"})

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/fapi/v1/time", flaky)
        app.router.add_get("/fapi/v1/ping", down)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with BinanceRest(
                f"http://127.0.0.1:{port}", backoff_base=0.01, max_retries=2, timeout=0.3
            ) as rest:
                assert await rest.server_time() == 1
                assert rest.stats.retries == 2 and rest.stats.requests == 3
                assert rest.stats.last_used_weight_1m == 7
                with pytest.raises(RetriesExhausted, match="HTTP 502"):
                    await rest.ping()
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_the_budget_comes_from_the_limit_exchange_info_announces(exchange_cache: Path) -> None:
    """rateLimits' REQUEST_WEIGHT per minute sets the budget: 80 % of it by default, a requested
    budget as asked but never above the limit."""

    async def main() -> None:
        async with LocalExchange(config(exchange_cache, weight_limit=1000)) as ex:
            for asked, budget in ((None, 800), (300, 300), (5000, 1000)):
                async with BinanceRest(ex.base_url, weight_budget_per_min=asked) as rest:
                    await rest.symbols()
                    assert (rest.exchange_limit, rest.budget) == (1000, budget), asked
                    assert "exchange limit 1000" in rest.summary_line()

    asyncio.run(main())


def test_a_depth_snapshot_goes_first_when_gap_fills_used_their_share(exchange_cache: Path) -> None:
    """Gap fills (LOW) leave a quarter of the budget free and are paced over the minute: with the
    minute's weight near their share, a fill waits for the next minute while a depth snapshot (HIGH)
    is sent at once, and the summary shows who waited."""
    start = datetime(2024, 3, 5, 12, 0, 5, tzinfo=UTC)  # the server's minute ends ~55 s after start

    async def main() -> None:
        async with LocalExchange(config(exchange_cache, clock_start=start)) as ex:
            async with aiohttp.ClientSession() as s:  # another program of the same IP used 220
                for _ in range(11):
                    status, _, _ = await raw_get(
                        s, ex.base_url + "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1
                    )
                    assert status == 200
            async with BinanceRest(ex.base_url, weight_budget_per_min=400) as rest:
                await rest.server_time()  # weight 1; minutes follow the server clock from here on
                first = ex.markets["BTCUSDT"].first_id()
                for i in range(3):  # 220 + 1 + 60 = 281: one more fill passes the LOW share (300)
                    await rest.agg_trades("BTCUSDT", from_id=first + 10 * i, limit=10, priority=LOW)
                fill = asyncio.create_task(
                    rest.agg_trades("BTCUSDT", from_id=first + 30, limit=10, priority=LOW)
                )
                await asyncio.sleep(0.2)
                t0 = time.monotonic()
                book = await rest.depth("BTCUSDT", 1000)  # weight 20: 301 of 400, HIGH
                took = time.monotonic() - t0
                assert book["bids"] and took < 20  # not at the next minute, ~55 s away
                await asyncio.sleep(2)
                assert not fill.done()  # the fill waits for the next minute: 301 + 20 > 300
                fill.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await fill
                assert rest.stats.waits_by_priority.get("high", 0.0) == 0.0
                assert "low" in rest.summary_line() and HIGH == 0

    asyncio.run(main())


def test_a_storm_of_depth_snapshots_does_not_keep_a_gap_fill_out(exchange_cache: Path) -> None:
    """The other way round: gap fills (LOW) are paced, so between two fills a storm of snapshots
    (HIGH) could take the whole minute's budget and leave the waiting fill out until the next minute
    (or, minute after minute, for good). While a fill waits, snapshots stop short of the LOW share,
    so the fill goes as soon as its pace allows."""
    start = datetime(2024, 3, 5, 12, 0, 5, tzinfo=UTC)  # the server's minute ends ~55 s after start

    async def main() -> tuple[float, int]:
        async with (
            LocalExchange(config(exchange_cache, clock_start=start)) as ex,
            BinanceRest(ex.base_url, weight_budget_per_min=400) as rest,
        ):
            await rest.server_time()
            first = ex.markets["BTCUSDT"].first_id()
            for i in range(3):  # 60 of the LOW burst of 75: the next fill waits ~1 s for its pace
                await rest.agg_trades("BTCUSDT", from_id=first + 10 * i, limit=10, priority=LOW)
            t0 = time.monotonic()
            fill = asyncio.create_task(rest.agg_trades("BTCUSDT", from_id=first + 30, limit=10, priority=LOW))
            await asyncio.sleep(0.05)
            storm = [asyncio.create_task(rest.depth("BTCUSDT", 1000)) for _ in range(30)]  # 600 weight
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fill), 15)
            took = time.monotonic() - t0
            went = sum(t.done() for t in storm)
            for t in [*storm, fill]:
                t.cancel()
            await asyncio.gather(*storm, fill, return_exceptions=True)
            return took, went

    took, went = asyncio.run(main())
    assert took < 10, took  # not at the next minute, ~55 s away
    assert 0 < went <= 10  # the storm went too, up to the LOW cap less the fill's guarantee
