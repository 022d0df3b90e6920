"""Live market data against the local exchange: mark prices, funding settlements, open-interest polls
(with failures recorded as poll misses) and liquidations, each checked against what the exchange sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
from ib_helpers import Tap, exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.exchange import LocalExchange
from microstructure.ingest.binance.rest import BinanceRest
from microstructure.ingest.collectors.market import collect_market_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DAY = 86_400_000


def test_live_market_data(db_url, ib_cache, tmp_path) -> None:
    start = datetime(2024, 3, 6, 7, 59, 54, tzinfo=UTC)  # a funding settlement at 08:00:00, 6 s in

    async def go():
        cfg = exchange_config(ib_cache, history_days=1, live_rate=5.0, clock_start=start)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            rest = BinanceRest(ex.base_url, max_rate_limited=1, max_retries=1)
            await rest.open()
            streams = [f"{s.lower()}@markPrice@1s" for s in SYMBOLS] + [
                f"{s.lower()}@forceOrder" for s in SYMBOLS
            ]
            task = asyncio.create_task(
                collect_market_live(
                    settings,
                    db_url,
                    SYMBOLS,
                    live_seconds=11.0,
                    writer=writer,
                    rest=rest,
                    oi_interval=2.0,
                    poll_retries=1,
                    poll_backoff=0.3,
                )
            )
            await asyncio.sleep(0.7)
            tap = Tap(ex.ws_url, streams)
            await tap.start()
            await asyncio.sleep(1.0)
            ex.config.faults.rest_429_rate = 1.0  # polls fail for a while
            await asyncio.sleep(2.5)
            ex.config.faults.rest_429_rate = 0.0
            # liquidations: replay a busy 10 minutes of yesterday through the live streams
            keys = [k for k in ex.hub.active() if k.kind in ("forceOrder", "forceOrderAll")]
            for sym in SYMBOLS:
                m = ex.markets[sym]
                liq = m.liquidations(m.origin_ms, m.origin_ms + DAY)
                assert len(liq["T"]) > 0
            m = ex.markets["BTCUSDT"]
            liq = m.liquidations(m.origin_ms, m.origin_ms + DAY)
            t0 = int(liq["T"][0]) // 1000 * 1000
            ex.producer.force_orders(t0, t0 + 3_600_000, ex.now_ms(), keys)
            await asyncio.sleep(5.0)
            await tap.stop()
            report = await task
            await writer.close()
            await rest.close()
            fundings = {s: ex.markets[s].fundings(0, ex.now_ms() + 1) for s in SYMBOLS}
            oi_at = {s: ex.markets[s].oi_at for s in SYMBOLS}
            return report, tap.messages, fundings, oi_at, ex

    report, sent, fundings, oi_at, _ex = asyncio.run(go())

    # -- mark prices: every message the exchange sent while the tap listened, every second in between
    marks = asyncio.run(fetch_all(db_url, "SELECT * FROM mark_prices ORDER BY symbol, ts"))
    by_key = {(r["symbol"], ms(r["ts"])): r for r in marks}
    sent_marks = [d for s, d in sent if d["e"] == "markPriceUpdate"]
    assert len(sent_marks) >= 2 * 8
    for d in sent_marks:
        r = by_key[(d["s"], d["E"])]
        assert (r["mark_price"], r["index_price"], r["est_settle_price"], r["funding_rate"]) == (
            float(d["p"]),
            float(d["i"]),
            float(d["P"]),
            float(d["r"]),
        )
        assert ms(r["next_funding_ts"]) == d["T"] and r["recv_ts"] is not None
    for sym in SYMBOLS:
        secs = sorted(ms(r["ts"]) // 1000 for r in marks if r["symbol"] == sym)
        assert secs == list(range(secs[0], secs[0] + len(secs))), "a mark-price second is missing"
        assert report.mark_rows[sym] == len(secs)

    # -- funding: every settlement up to now, including the one that happened during the run
    funding = asyncio.run(fetch_all(db_url, "SELECT * FROM funding_rates ORDER BY symbol, funding_ts"))
    settle_8 = int(datetime(2024, 3, 6, 8, tzinfo=UTC).timestamp() * 1000)
    for sym in SYMBOLS:
        T, r, mk = fundings[sym]
        got = [
            (ms(x["funding_ts"]), x["funding_rate"], x["mark_price"]) for x in funding if x["symbol"] == sym
        ]
        want = [(int(t), float(f"{a:.8f}"), float(f"{b:.8f}")) for t, a, b in zip(T, r, mk, strict=True)][-3:]
        assert settle_8 in [g[0] for g in got]
        assert got[-len(want) :] == want

    # -- open interest: one row per successful poll, values as the exchange had them; misses recorded
    oi = asyncio.run(fetch_all(db_url, "SELECT * FROM open_interest ORDER BY symbol, ts"))
    midnight = ms(start) // DAY * DAY
    for sym in SYMBOLS:
        # nothing was stored before: openInterestHist filled every 5 minutes since today's midnight
        hist = [x for x in oi if x["symbol"] == sym and x["source"] == "hist"]
        assert [ms(x["ts"]) for x in hist] == list(range(midnight, ms(start) + 1, 300_000))
        assert len(hist) == report.oi_filled[sym] == 96
        for x in hist:
            assert np.isclose(x["open_interest"], oi_at[sym](ms(x["ts"])), rtol=1e-9) and x["recv_ts"] is None
        rows = [x for x in oi if x["symbol"] == sym and x["source"] != "hist"]
        assert len(rows) == report.oi_polls[sym] >= 3
        assert {x["source"] for x in rows} == {"rest"}
        # each poll carries its local receive time: in order, spaced like the exchange's times (its clock is fixed)
        recv = [x["recv_ts"] for x in rows]
        assert None not in recv and recv == sorted(recv)
        span_exchange = (rows[-1]["ts"] - rows[0]["ts"]).total_seconds()
        assert abs((recv[-1] - recv[0]).total_seconds() - span_exchange) < 2
        for x in rows:
            assert np.isclose(x["open_interest"], oi_at[sym](ms(x["ts"])))
    misses = asyncio.run(fetch_all(db_url, "SELECT * FROM ingest_events WHERE kind = 'poll_miss'"))
    assert sum(report.poll_misses.values()) == len(misses) >= 2
    assert {m["symbol"] for m in misses} <= set(SYMBOLS)

    # -- liquidations: every forceOrder sent
    liqs = asyncio.run(fetch_all(db_url, "SELECT * FROM liquidations"))
    keyset = {
        (x["symbol"], ms(x["ts"]), ms(x["trade_ts"]), x["side"], x["price"], x["quantity"]) for x in liqs
    }
    sent_liq = [d for s, d in sent if d["e"] == "forceOrder"]
    assert len(sent_liq) >= 3
    for d in sent_liq:
        o = d["o"]
        assert (o["s"], d["E"], o["T"], o["S"], float(o["p"]), float(o["q"])) in keyset
    assert len(liqs) == sum(report.liquidation_rows.values()) == len(sent_liq)
    assert report.malformed == 0


def test_rest_funding_rows_carry_the_interval_since_the_previous_settlement() -> None:
    from microstructure.ingest.collectors.market import funding_rows_from_rest

    h = 3_600_000
    page = [  # out of order on purpose; Binance's settlement times carry a few ms of jitter
        {"symbol": "BTCUSDT", "fundingTime": 16 * h + 2, "fundingRate": "0.00010000", "markPrice": "65000.1"},
        {"symbol": "BTCUSDT", "fundingTime": 8 * h + 5, "fundingRate": "-0.00002000", "markPrice": ""},
        {"symbol": "BTCUSDT", "fundingTime": 20 * h + 1, "fundingRate": "0.00030000", "markPrice": "65100"},
    ]
    assert funding_rows_from_rest(page) == [
        (8 * h + 5, -0.00002, None, None),
        (16 * h + 2, 0.0001, 65000.1, 8),
        (20 * h + 1, 0.0003, 65100.0, 4),
    ]
