"""Malformed REST answers (fields missing, or not JSON) from the local exchange: the market collector's
open-interest and funding polls and the diff book's depth snapshots count them as malformed, log and
record them with their text, record the poll miss, retry, and keep collecting once answers are sound."""

from __future__ import annotations

import asyncio
import json
import logging

from ib_helpers import exchange_config, fetch_all, make_writer, settings_for

from microstructure.exchange import LocalExchange
from microstructure.ingest.binance.rest import BinanceRest
from microstructure.ingest.collectors.book import collect_book_live
from microstructure.ingest.collectors.market import collect_market_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def _events(db_url: str, kind: str) -> list:
    return asyncio.run(fetch_all(db_url, "SELECT * FROM ingest_events WHERE kind = $1 ORDER BY ts", kind))


def test_market_polls_survive_malformed_rest_answers(db_url, ib_cache, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)

    async def go():
        cfg = exchange_config(ib_cache, history_days=1)
        cfg.faults.rest_malformed = 1.0
        cfg.faults.rest_malformed_paths = ("/fapi/v1/openInterest", "/fapi/v1/fundingRate")
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            rest = BinanceRest(ex.base_url, max_retries=1)
            await rest.open()
            task = asyncio.create_task(
                collect_market_live(
                    settings, db_url, SYMBOLS, live_seconds=8.0, writer=writer, rest=rest,
                    oi_interval=1.0, funding_interval=2.0, poll_retries=1, poll_backoff=0.2,
                )
            )  # fmt: skip
            await asyncio.sleep(2.5)
            ex.config.faults.rest_malformed = 0.0
            healed_at = ex.now_ms()  # open-interest rows carry the exchange clock
            report = await task  # raises if a malformed answer ended a loop
            await writer.close()
            await rest.close()
            return report, healed_at

    report, healed_at = asyncio.run(go())
    malformed = _events(db_url, "malformed")
    details = [json.loads(e["detail"]) for e in malformed]
    assert report.malformed == len(malformed) >= 4
    assert {d["stream"] for d in details} == {"market /fapi/v1/openInterest", "market /fapi/v1/fundingRate"}
    # both broken shapes arrived and each is recorded with the text as received
    assert any(d["text"] in ("{}", "[{}]") for d in details)
    assert any(d["text"] not in ("{}", "[{}]") and d["error"].startswith("MalformedReply") for d in details)
    assert {e["symbol"] for e in malformed} == set(SYMBOLS)
    logged = [r.getMessage() for r in caplog.records if "malformed message skipped" in r.getMessage()]
    assert len(logged) == len(malformed) and any(m.endswith("{}") for m in logged)
    # every malformed answer is also a recorded poll miss
    misses = _events(db_url, "poll_miss")
    assert sum(report.poll_misses.values()) == len(misses) >= len(malformed)
    # the loops went on: open interest and funding rows once the answers were sound again
    for sym in SYMBOLS:
        late = asyncio.run(
            fetch_all(
                db_url,
                "SELECT count(*) AS n FROM open_interest WHERE symbol = $1 AND ts > to_timestamp($2 / 1000.0)",
                sym,
                healed_at,
            )
        )
        assert late[0]["n"] >= 3, sym
        assert report.funding_rows[sym] > 0, sym
    assert report.oi_polls == {
        s: n
        for s, n in (
            (r["symbol"], r["n"])
            for r in asyncio.run(
                fetch_all(
                    db_url, "SELECT symbol, count(*) AS n FROM open_interest WHERE source = 'rest' GROUP BY 1"
                )
            )
        )
    }


def test_diff_book_retries_a_malformed_depth_snapshot(db_url, ib_cache, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)

    async def go():
        cfg = exchange_config(ib_cache)
        cfg.faults.rest_malformed = 1.0
        cfg.faults.rest_malformed_paths = ("/fapi/v1/depth",)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            task = asyncio.create_task(
                collect_book_live(
                    settings, db_url, ["BTCUSDT"], source="diff", live_seconds=10.0, writer=writer
                )
            )
            await asyncio.sleep(2.5)
            ex.config.faults.rest_malformed = 0.0
            report = await task
            await writer.close()
            return report

    report = asyncio.run(go())
    malformed = _events(db_url, "malformed")
    assert report.malformed == len(malformed) >= 2
    assert {e["symbol"] for e in malformed} == {"BTCUSDT"}
    assert {json.loads(e["detail"])["stream"] for e in malformed} == {"book_diff /fapi/v1/depth"}
    misses = [json.loads(e["detail"]) for e in _events(db_url, "poll_miss")]
    assert len(misses) >= len(malformed) and {m["endpoint"] for m in misses} == {"/fapi/v1/depth"}
    # the symbol's sync went on and the book was sampled once the snapshot was sound
    assert report.rows["BTCUSDT"] >= 3
    assert not [r for r in caplog.records if "exception was never retrieved" in r.getMessage()]
