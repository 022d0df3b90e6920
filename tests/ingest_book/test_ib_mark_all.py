"""Mark prices from MARK_ALL_FROM symbols on: one `!markPrice@arr@1s` instead of a `<s>@markPrice@1s`
per symbol, and the stored rows equal what the per-symbol streams carry for the same seconds."""

from __future__ import annotations

import asyncio

from ib_helpers import Tap, exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.exchange import LocalExchange
from microstructure.exchange.config import universe_symbols
from microstructure.ingest.collectors.market import (
    MARK_ALL_FROM,
    MarketLive,
    MarketReport,
    collect_market_live,
)
from microstructure.ingest.health import EventLog, Health


def _marks(symbols: list[str], which: str) -> list[str]:
    m = MarketLive(symbols, None, None, Health(), EventLog(None), MarketReport(symbols), oi_interval=60,
                   funding_interval=3600, mark_stream=which)  # fmt: skip
    return [s for s in m.streams() if "markPrice" in s]


def test_which_mark_streams_are_asked_for() -> None:
    few = [f"C{i}USDT" for i in range(MARK_ALL_FROM - 1)]
    many = [f"C{i}USDT" for i in range(MARK_ALL_FROM)]
    assert _marks(few, "auto") == [f"c{i}usdt@markPrice@1s" for i in range(MARK_ALL_FROM - 1)]
    assert _marks(many, "auto") == ["!markPrice@arr@1s"]
    assert _marks(few, "all") == ["!markPrice@arr@1s"]
    assert len(_marks(many, "per-symbol")) == MARK_ALL_FROM


def test_the_all_market_mark_stream_stores_what_the_per_symbol_streams_carry(
    db_url, ib_cache, tmp_path
) -> None:
    universe = universe_symbols(MARK_ALL_FROM + 4)
    collected = universe[:MARK_ALL_FROM]  # the last 4 are on the array too and must be ignored

    async def go():
        cfg = exchange_config(ib_cache, symbols=("BTCUSDT",), universe=len(universe), universe_rate=50.0)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            tap = Tap(ex.ws_url, [f"{s.lower()}@markPrice@1s" for s in collected])
            await tap.start()
            task = asyncio.create_task(
                collect_market_live(
                    settings, db_url, collected, live_seconds=6.0, writer=writer, oi_interval=600.0,
                )
            )  # fmt: skip
            await asyncio.sleep(1.0)
            subscribed = sorted(k.name for k in ex.hub.active() if "markPrice" in k.name)
            report = await task
            await tap.stop()
            await writer.close()
            return report, subscribed, tap.messages

    report, subscribed, sent = asyncio.run(go())
    # the collector asked for the array only (the tap's per-symbol streams are the other names)
    assert "!markPrice@arr@1s" in subscribed
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM mark_prices"))
    assert {r["symbol"] for r in rows} == set(collected)

    def key(sym: str, ts: int) -> tuple[str, int]:
        return sym, ts // 1000  # the same second's mark (each stream stamps its own send time)

    stored = {
        key(r["symbol"], ms(r["ts"])): (
            r["mark_price"],
            r["index_price"],
            r["funding_rate"],
            r["next_funding_ts"],
        )
        for r in rows
    }
    tapped = {key(d["s"], d["E"]): (float(d["p"]), float(d["i"]), float(d["r"]), d["T"]) for _, d in sent}
    common = stored.keys() & tapped.keys()
    assert len(common) >= 3 * len(collected)  # at least 3 seconds of every symbol from both
    for k in common:
        mark, index, rate, next_ts = stored[k]
        assert (mark, index, rate, ms(next_ts)) == tapped[k], k
    assert report.ok
