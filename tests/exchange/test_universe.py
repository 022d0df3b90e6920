"""`--universe N --universe-rate R`: a market of synthetic perpetuals, Zipf-like activity, the
all-market streams, listings and delistings during a run, and Binance's connection limit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from exchange_helpers import fetch, run
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from microstructure.exchange import ExchangeConfig, ExchangeThread
from microstructure.exchange.config import universe_spec, universe_symbols


def test_universe_specs_are_realistic_and_rates_zipf() -> None:
    cfg = ExchangeConfig(universe=300, universe_rate=5000.0)
    rates = cfg.universe_rates()
    assert list(rates) == universe_symbols(300) and sum(rates.values()) == pytest.approx(5000.0)
    r = list(rates.values())
    assert r[0] == pytest.approx(2 * r[1]) and r[0] == pytest.approx(300 * r[-1])
    for sym in universe_symbols(300):
        s = universe_spec(sym)
        assert 1e-4 <= s.start_price <= 6e4
        # about 4-6 significant digits of price in one tick, as Binance's contracts
        assert 1e3 <= s.start_price / s.tick_size <= 1e7, s


def test_a_universe_lists_streams_and_delists(tmp_path: Path) -> None:
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), universe=20, universe_rate=600.0, history_days=0, live_rate=20.0,
        cache_dir=tmp_path / "cache", max_connections_5m=4,
    )  # fmt: skip

    def info_status() -> dict[str, str]:
        body = fetch(ex, "/fapi/v1/exchangeInfo")[2]
        return {s["symbol"]: s["status"] for s in body["symbols"]}  # type: ignore[index]

    thread = ExchangeThread(cfg)
    with thread as ex:
        status = info_status()
        assert len(status) == 21 and set(status.values()) == {"TRADING"}

        async def watch(seconds: float) -> tuple[list[list[dict]], dict[str, int]]:
            url = ex.ws_url + "/stream?streams=!markPrice@arr@1s/u0001usdt@aggTrade/u0020usdt@aggTrade"
            marks: list[list[dict]] = []
            trades: dict[str, int] = {}
            async with connect(url) as ws:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if msg["stream"] == "!markPrice@arr@1s":
                        marks.append(msg["data"])
                    else:
                        trades[msg["data"]["s"]] = trades.get(msg["data"]["s"], 0) + 1
            return marks, trades

        marks, trades = run(watch(3.5))
        assert len(marks) >= 2 and all(len(m) == 21 for m in marks)
        assert {m["e"] for m in marks[-1]} == {"markPriceUpdate"}
        assert trades["U0001USDT"] > 5 * trades.get("U0020USDT", 0)  # rank 1 trades 20x rank 20

        gone = thread.call(ex.delist_contract)
        new = thread.call(ex.list_contract)
        assert (gone, new) == ("U0001USDT", "U0021USDT")
        status = info_status()
        assert status[gone] == "SETTLING" and status[new] == "TRADING" and len(status) == 22
        marks, trades = run(watch(2.5))
        assert "U0001USDT" not in trades  # a settling contract's streams are silent
        assert {m["s"] for m in marks[-1]} == set(status) - {gone}

        # two connections so far: two more are served, the fifth in 5 minutes is refused (429)
        async def connections() -> int:
            for _ in range(2):
                async with connect(ex.ws_url + "/ws/btcusdt@aggTrade"):
                    pass
            with pytest.raises(InvalidStatus) as err:
                async with connect(ex.ws_url + "/ws/btcusdt@aggTrade"):
                    pass
            return err.value.response.status_code

        assert run(connections()) == 429
