"""Malformed messages of every kind on every stream are counted, logged and recorded; collection goes on."""

from __future__ import annotations

import asyncio
import logging
import time

from ib_helpers import exchange_config, fetch_all, make_writer, settings_for

from microstructure.exchange import LocalExchange
from microstructure.ingest.collectors.book import collect_book_live
from microstructure.ingest.collectors.market import collect_market_live
from microstructure.ingest.health import EventLog, Health

BAD = {
    "btcusdt@depth20@500ms": [
        "not json at all",
        '{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1,"pu":0,"b":[],"a":[]}',  # no u
        '{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1,"u":2,"pu":0,"b":[["abc","1"]],"a":[]}',
        '{"e":"depthUpdate","E":"1","T":1,"s":"BTCUSDT","U":1,"u":2,"pu":0,"b":[],"a":[]}',
        '{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1,"u":2,"pu":0,"b":{},"a":[]}',
        "[1,2,3]",
        '{"e":"kline"}',
    ],
    "ethusdt@depth@100ms": [
        '{"e":"depthUpdate","E":1,"T":1,"s":"ETHUSDT","U":"1","u":2,"pu":1,"b":[],"a":[]}',
        '{"e":"depthUpdate","E":1,"T":1,"s":"ETHUSDT","U":1,"u":2,"pu":1,"b":[["1.0"]],"a":[]}',
        '{"stream":',
    ],
    "btcusdt@markPrice@1s": [
        '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":null,"T":1}',
        '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","T":1}',
        '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"x1","T":1}',
    ],
    "ethusdt@forceOrder": [
        '{"e":"forceOrder","E":1,"o":"x"}',
        '{"e":"forceOrder","E":1,"o":{"s":"ETHUSDT","S":"HOLD","q":"1","p":"1","T":1}}',
        '{"e":"forceOrder","E":1,"o":{"s":"ETHUSDT","S":"BUY","q":"1","p":"1"}}',
    ],
}


def test_malformed_messages_are_counted_logged_and_skipped(db_url, ib_cache, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    symbols = ["BTCUSDT", "ETHUSDT"]

    async def go():
        async with LocalExchange(exchange_config(ib_cache, live_rate=20.0)) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            stop = asyncio.Event()
            health, events = Health(), EventLog(db_url)
            shared = {"writer": writer, "stop_event": stop, "health": health, "events": events}
            tasks = [
                # one book source per symbol: rows of both sources for one symbol would share keys
                asyncio.create_task(collect_book_live(settings, db_url, ["BTCUSDT"], **shared)),
                asyncio.create_task(
                    collect_book_live(settings, db_url, ["ETHUSDT"], source="diff", **shared)
                ),
                asyncio.create_task(collect_market_live(settings, db_url, symbols, oi_interval=30, **shared)),
            ]
            await asyncio.sleep(2.0)
            for name, payloads in BAD.items():
                key = ex.hub.keys[name]
                for p in payloads:
                    ex.hub.publish(key, p)
            injected_at = int(time.time() * 1000)
            await asyncio.sleep(3.0)
            stop.set()
            reports = await asyncio.gather(*tasks)
            await events.flush()
            await writer.close()
            return reports, health, injected_at

    (depth20, diff, market), health, injected_at = asyncio.run(go())
    n_bad = sum(len(v) for v in BAD.values())
    assert health.malformed_total() == n_bad
    assert depth20.malformed == len(BAD["btcusdt@depth20@500ms"])
    assert diff.malformed == len(BAD["ethusdt@depth@100ms"])
    assert market.malformed == len(BAD["btcusdt@markPrice@1s"]) + len(BAD["ethusdt@forceOrder"])
    logged = [r for r in caplog.records if "malformed message skipped" in r.getMessage()]
    assert len(logged) == n_bad
    rows = asyncio.run(fetch_all(db_url, "SELECT detail FROM ingest_events WHERE kind = 'malformed'"))
    assert len(rows) == n_bad
    # every collector went on: rows received after the malformed messages, and no resync from them
    assert sum(diff.resyncs.values()) == 0
    for table, where, syms in (
        ("book_snapshots", "source = 'depth20'", {"BTCUSDT"}),
        ("book_snapshots", "source = 'diff'", {"ETHUSDT"}),
        ("mark_prices", "true", set(symbols)),
    ):
        late = asyncio.run(
            fetch_all(
                db_url,
                f"SELECT symbol, count(*) AS n FROM {table} WHERE {where} AND recv_ts > to_timestamp($1 / 1000.0) "
                "GROUP BY symbol",
                injected_at,
            )
        )
        assert {r["symbol"] for r in late} == syms and all(r["n"] >= 2 for r in late), (table, where)


def test_collect_all_counts_each_malformed_message_under_its_collector(db_url, ib_cache, tmp_path) -> None:
    """Over shared connections, a message that does not even parse is still its stream's: the
    collectors' counts add up to the health section's total (issue 29: 0 beside 3)."""
    from microstructure.ingest.collectors.all import collect_all

    bad = {k: BAD[k] for k in ("btcusdt@depth20@500ms", "btcusdt@markPrice@1s")}

    async def go():
        async with LocalExchange(exchange_config(ib_cache, live_rate=20.0)) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            stop = asyncio.Event()
            health = Health()
            task = asyncio.create_task(
                collect_all(settings, db_url, ["BTCUSDT", "ETHUSDT"], stop_event=stop, handle_signals=False,
                            health=health, features_interval=None, reconcile_interval=None)
            )  # fmt: skip
            await asyncio.sleep(2.5)
            for name, payloads in bad.items():
                assert ex.hub.subs.get(name), name
                for p in payloads:
                    ex.hub.publish(ex.hub.keys[name], p)
            await asyncio.sleep(2.0)
            stop.set()
            return await task, health

    report, health = asyncio.run(go())
    assert report.parts["book"].malformed == len(bad["btcusdt@depth20@500ms"])  # "not json at all" too
    assert report.parts["market"].malformed == len(bad["btcusdt@markPrice@1s"])
    assert health.malformed_total() == sum(len(v) for v in bad.values())
    assert (
        sum(p.malformed for p in report.parts.values() if hasattr(p, "malformed")) == health.malformed_total()
    )
    summary = "\n".join(report.summary_lines())
    assert "of no collector" not in summary
