"""Historical loaders: bookDepth, fundingRate (monthly), metrics, mark/index/premium klines, REST
funding pages and openInterestHist, over days on both sides of 2022-08-11 (headerless and header CSVs)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from ib_helpers import (
    archive_csv,
    check_book_depth_bands,
    check_funding_archive,
    check_klines,
    check_metrics,
    day_ms,
    exchange_config,
    fetch_all,
    make_writer,
    ms,
    settings_for,
)

from microstructure.exchange import LocalExchange
from microstructure.ingest.binance.rest import BinanceRest
from microstructure.ingest.collectors.book import collect_book_historical
from microstructure.ingest.collectors.market import collect_market_historical

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DAY = 86_400_000


class RestFromHorizon(BinanceRest):
    """REST whose funding history starts at `horizon_ms`, as Binance's reaches back only so far: the
    settlements before it can come from the monthly archive alone."""

    def __init__(self, base_url: str, horizon_ms: int) -> None:
        super().__init__(base_url)
        self.horizon_ms = horizon_ms
        self.funding_rows = 0

    async def funding_rate(
        self, symbol: Any = None, start_ms: Any = None, end_ms: Any = None, limit: int = 1000
    ):
        rows = await super().funding_rate(symbol, start_ms, end_ms, limit)
        rows = [r for r in rows if r["fundingTime"] >= self.horizon_ms]
        self.funding_rows += len(rows)
        return rows


def test_historical_loaders_read_both_archive_formats(db_url, ib_cache, tmp_path) -> None:
    first, last = date(2022, 8, 9), date(2022, 8, 12)
    horizon = day_ms(date(2022, 8, 11))  # REST funding from here on; before it only the archive has them

    async def go():
        cfg = exchange_config(
            ib_cache,
            history_days=26,
            live_rate=None,
            trades_per_day=2_000,
            clock_start=datetime(2022, 9, 3, 6, 0, 5, tzinfo=UTC),
        )
        cfg.faults.missing_archive_days = ("2022-08-12",)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            book = await collect_book_historical(settings, db_url, SYMBOLS, first, last)
            writer = await make_writer(db_url, tmp_path / "spill")
            rest = RestFromHorizon(ex.base_url, horizon)
            await rest.open()
            market = await collect_market_historical(
                settings, db_url, SYMBOLS, first, last, writer=writer, rest=rest
            )
            await writer.close()
            await rest.close()
            assert rest.funding_rows > 0  # REST served the part from the horizon on
            fundings = {s: ex.markets[s].fundings(day_ms(first), day_ms(last) + DAY) for s in SYMBOLS}
            oi = {s: ex.markets[s].oi_at for s in SYMBOLS}
            csvs = {
                kind: await archive_csv(ex.base_url, kind, "ETHUSDT", "2022-08-11")
                for kind in ("bookDepth", "metrics", "markPriceKlines")
            }
            csvs["fundingRate"] = {
                s: await archive_csv(ex.base_url, "fundingRate", s, "2022-08", "monthly") for s in SYMBOLS
            }
            return book, market, fundings, oi, csvs

    book, market, fundings, oi, csvs = asyncio.run(go())
    assert book.missing and market.missing  # 2022-08-12 is not published: recorded, not fatal
    events = asyncio.run(fetch_all(db_url, "SELECT kind, count(*) AS n FROM ingest_events GROUP BY kind"))
    assert {e["kind"]: e["n"] for e in events}["archive_missing"] == len(book.missing) + len(market.missing)

    def per_day(table: str, extra: str = "") -> dict[tuple[str, str], int]:
        rows = asyncio.run(
            fetch_all(
                db_url,
                f"SELECT symbol, (ts AT TIME ZONE 'UTC')::date::text AS d, count(*) AS n FROM {table} {extra} "
                "GROUP BY 1, 2",
            )
        )
        return {(r["symbol"], r["d"]): r["n"] for r in rows}

    loaded = ("2022-08-09", "2022-08-10", "2022-08-11")  # 08-09/08-10 headerless, 08-11 with a header
    bands = per_day("book_depth_bands")
    metrics = per_day("futures_metrics")
    oi_metrics = per_day("open_interest", "WHERE source = 'metrics'")
    oi_hist = per_day("open_interest", "WHERE source = 'hist'")
    for s in SYMBOLS:
        for d in loaded:
            assert bands[(s, d)] == 2880 * 10  # a set of 10 bands every 30 s
            assert metrics[(s, d)] == oi_metrics[(s, d)] == 288
            assert (s, d) not in oi_hist
        assert (s, "2022-08-12") not in bands
        assert oi_hist[(s, "2022-08-12")] == 288  # the unpublished day came from openInterestHist
    klines = asyncio.run(
        fetch_all(
            db_url,
            "SELECT symbol, kind, count(*) AS n, min(ts) AS lo, max(close_ts) AS hi FROM price_klines GROUP BY 1, 2",
        )
    )
    assert {(k["symbol"], k["kind"]) for k in klines} == {
        (s, k) for s in SYMBOLS for k in ("mark", "index", "premium")
    }
    assert all(k["n"] == 3 * 1440 for k in klines)
    bands_rows = asyncio.run(fetch_all(db_url, "SELECT DISTINCT percentage FROM book_depth_bands ORDER BY 1"))
    assert [r["percentage"] for r in bands_rows] == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]

    # values equal the archive CSVs of 2022-08-11 (with a header), read here by pandas
    check_book_depth_bands(db_url, "ETHUSDT", "2022-08-11", csvs["bookDepth"])
    assert len(csvs["bookDepth"]) == 28_800
    check_metrics(db_url, "ETHUSDT", "2022-08-11", csvs["metrics"])
    check_klines(db_url, "ETHUSDT", "2022-08-11", "mark", csvs["markPriceKlines"])

    # funding: every settlement in the range; before the REST horizon from the monthly archive alone
    # (headerless 2022-08), equal to its CSV read by pandas (no mark price: only REST has one)
    funding = asyncio.run(fetch_all(db_url, "SELECT * FROM funding_rates ORDER BY symbol, funding_ts"))
    for s in SYMBOLS:
        T, r, mk = fundings[s]
        got = [(ms(x["funding_ts"]), x["funding_rate"]) for x in funding if x["symbol"] == s]
        assert got == [(int(t), float(f"{v:.8f}")) for t, v in zip(T, r, strict=True)]
        assert len(got) == 12
        archive_only = check_funding_archive(db_url, s, csvs["fundingRate"][s], day_ms(first), horizon)
        assert len(archive_only) == 6 and archive_only["mark_price"].isna().all()
        both = check_funding_archive(db_url, s, csvs["fundingRate"][s], horizon, day_ms(last) + DAY)
        assert both["mark_price"].tolist() == [float(f"{m:.8f}") for m in mk[6:].tolist()]  # filled by REST
    # open interest values are the exchange's at those times
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM open_interest WHERE symbol = 'BTCUSDT'"))
    for x in rows[:: max(1, len(rows) // 50)]:
        assert np.isclose(x["open_interest"], oi["BTCUSDT"](ms(x["ts"])), rtol=1e-9)
