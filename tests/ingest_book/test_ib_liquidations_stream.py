"""--liquidations-stream: per-symbol <s>@forceOrder, the all-market !forceOrder@arr (other symbols'
orders ignored) or auto (all from FORCE_ALL_FROM symbols on), on `collect market` and `collect all`."""

from __future__ import annotations

import asyncio

import pytest
from ib_helpers import Tap, exchange_config, fetch_all, ms, settings_for

from microstructure.cli import main
from microstructure.exchange import LocalExchange
from microstructure.ingest.collectors.all import collect_all
from microstructure.ingest.collectors.market import FORCE_ALL_FROM, MarketLive, MarketReport
from microstructure.ingest.health import EventLog, Health

DAY = 86_400_000


def _streams(symbols: list[str], which: str) -> list[str]:
    m = MarketLive(symbols, None, None, Health(), EventLog(None), MarketReport(symbols), oi_interval=60,
                   funding_interval=3600, liquidations_stream=which)  # fmt: skip
    return [s for s in m.streams() if "forceOrder" in s]


def test_which_liquidation_streams_are_asked_for() -> None:
    two = ["BTCUSDT", "ETHUSDT"]
    many = [f"C{i}USDT" for i in range(FORCE_ALL_FROM)]
    assert _streams(two, "auto") == ["btcusdt@forceOrder", "ethusdt@forceOrder"]
    assert _streams(two, "per-symbol") == ["btcusdt@forceOrder", "ethusdt@forceOrder"]
    assert _streams(two, "all") == ["!forceOrder@arr"]
    assert _streams(many, "auto") == ["!forceOrder@arr"]
    assert len(_streams(many, "per-symbol")) == FORCE_ALL_FROM
    with pytest.raises(ValueError, match="liquidations_stream"):
        _streams(two, "some")


def test_all_market_stream_stores_every_collected_symbol_and_ignores_the_others(
    db_url, ib_cache, tmp_path
) -> None:
    collected = ["BTCUSDT", "ETHUSDT"]

    async def go():
        cfg = exchange_config(ib_cache, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"), history_days=1)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            task = asyncio.create_task(
                collect_all(
                    settings, db_url, collected, live_seconds=6.0, handle_signals=False,
                    include_aggtrades=False, oi_interval=30.0, liquidations_stream="all",
                )
            )  # fmt: skip
            tap = Tap(ex.ws_url, ["!forceOrder@arr"])
            await tap.start()
            await asyncio.sleep(2.0)
            subscribed = sorted(k.name for k in ex.hub.active() if "forceOrder" in k.name)
            # a day of liquidations of every listed symbol through the live all-market stream
            keys = [k for k in ex.hub.active() if k.kind == "forceOrderAll"]
            m = ex.markets["BTCUSDT"]
            window = (m.origin_ms, m.origin_ms + DAY)
            ex.producer.force_orders(window[0], window[1], ex.now_ms(), keys)
            await asyncio.sleep(2.0)
            await tap.stop()
            report = await task
            return report, subscribed, tap.messages, window

    report, subscribed, sent, window = asyncio.run(go())
    assert subscribed == ["!forceOrder@arr"]  # no per-symbol stream
    injected = [d for _, d in sent if window[0] <= d["o"]["T"] < window[1]]
    by_symbol = {s: [d for d in injected if d["o"]["s"] == s] for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")}
    assert all(len(v) > 50 for v in by_symbol.values())  # the stream carried every symbol
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM liquidations"))
    stored = {
        (r["symbol"], ms(r["ts"]), ms(r["trade_ts"]), r["side"], r["price"], r["quantity"]) for r in rows
    }
    want = {
        (o["s"], d["E"], o["T"], o["S"], float(o["p"]), float(o["q"]))
        for d in injected
        if (o := d["o"])["s"] in collected
    }
    in_window = {x for x in stored if window[0] <= x[2] < window[1]}
    assert in_window == want  # every liquidation of the collected symbols, as sent
    assert {x[0] for x in stored} <= set(collected)  # SOLUSDT's orders were ignored
    market = report.parts["market"]
    assert sum(market.liquidation_rows.values()) == len(rows) and report.ok


def test_flag_in_help_and_checked(capsys) -> None:
    for cmd in ("market", "all"):
        with pytest.raises(SystemExit):
            main(["collect", cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--liquidations-stream" in out and "!forceOrder@arr" in out and "per-symbol" in out
        code = main(["collect", cmd, "--symbol", "BTCUSDT", "--liquidations-stream", "some"])
        assert code == 2
        assert (
            "--liquidations-stream: expected per-symbol, all or auto, got 'some'" in capsys.readouterr().err
        )
