"""Historical loaders: bookDepth, fundingRate (monthly), metrics, mark/index/premium klines, REST
funding pages and openInterestHist, over days on both sides of 2022-08-11 (headerless and header CSVs)."""

from __future__ import annotations

import asyncio
import io
import zipfile
from datetime import UTC, date, datetime

import aiohttp
import numpy as np
import pandas as pd
from ib_helpers import exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.exchange import LocalExchange
from microstructure.ingest.book import collect_book_historical
from microstructure.ingest.market import collect_market_historical

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DAY = 86_400_000


def day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def test_historical_loaders_read_both_archive_formats(db_url, ib_cache, tmp_path) -> None:
    first, last = date(2022, 8, 9), date(2022, 8, 12)

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
            market = await collect_market_historical(settings, db_url, SYMBOLS, first, last, writer=writer)
            await writer.close()
            fundings = {s: ex.markets[s].fundings(day_ms(first), day_ms(last) + DAY) for s in SYMBOLS}
            oi = {s: ex.markets[s].oi_at for s in SYMBOLS}
            csvs = {}
            async with aiohttp.ClientSession() as http:
                for kind in ("bookDepth", "metrics", "markPriceKlines"):
                    path = (
                        f"{kind}/ETHUSDT/1m/ETHUSDT-1m-2022-08-11"
                        if kind == "markPriceKlines"
                        else f"{kind}/ETHUSDT/ETHUSDT-{kind}-2022-08-11"
                    )
                    async with http.get(f"{ex.base_url}/data/futures/um/daily/{path}.zip") as r:
                        assert r.status == 200, path
                        with zipfile.ZipFile(io.BytesIO(await r.read())) as z:
                            csvs[kind] = pd.read_csv(z.open(z.namelist()[0]))
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
    def stored(sql: str) -> pd.DataFrame:
        return pd.DataFrame([dict(r) for r in asyncio.run(fetch_all(db_url, sql))])

    day = "symbol = 'ETHUSDT' AND ts >= '2022-08-11' AND ts < '2022-08-12'"
    want = csvs["bookDepth"]
    got = stored(
        f"SELECT ts, percentage, depth, notional FROM book_depth_bands WHERE {day} ORDER BY ts, percentage"
    )
    assert len(got) == len(want) == 28_800
    want = want.assign(ts=pd.to_datetime(want["timestamp"], utc=True)).sort_values(["ts", "percentage"])
    assert (got["ts"].to_numpy() == want["ts"].to_numpy()).all()
    assert np.array_equal(got["percentage"].to_numpy(), want["percentage"].to_numpy(dtype=np.float32))
    assert np.array_equal(got["depth"].to_numpy(), want["depth"].to_numpy())
    assert np.array_equal(got["notional"].to_numpy(), want["notional"].to_numpy())
    want = csvs["metrics"]
    got = stored(f"SELECT * FROM futures_metrics WHERE {day} ORDER BY ts")
    assert (got["ts"].to_numpy() == pd.to_datetime(want["create_time"], utc=True).to_numpy()).all()
    for c in want.columns.drop(["create_time", "symbol"]):
        assert np.allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=0, atol=0, equal_nan=True), c
    want = csvs["markPriceKlines"]
    got = stored(f"SELECT * FROM price_klines WHERE kind = 'mark' AND {day} ORDER BY ts")
    assert (got["ts"].to_numpy() == pd.to_datetime(want["open_time"], unit="ms", utc=True).to_numpy()).all()
    assert (
        got["close_ts"].to_numpy() == pd.to_datetime(want["close_time"], unit="ms", utc=True).to_numpy()
    ).all()
    for c in ("open", "high", "low", "close"):
        assert np.array_equal(got[c].to_numpy(), want[c].to_numpy()), c

    # funding: every settlement in the range, from the monthly archive (headerless 2022-08) and REST
    funding = asyncio.run(fetch_all(db_url, "SELECT * FROM funding_rates ORDER BY symbol, funding_ts"))
    for s in SYMBOLS:
        T, r, _ = fundings[s]
        got = [(ms(x["funding_ts"]), x["funding_rate"]) for x in funding if x["symbol"] == s]
        assert got == [(int(t), float(f"{v:.8f}")) for t, v in zip(T, r, strict=True)]
        assert len(got) == 12
    # open interest values are the exchange's at those times
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM open_interest WHERE symbol = 'BTCUSDT'"))
    for x in rows[:: max(1, len(rows) // 50)]:
        assert np.isclose(x["open_interest"], oi["BTCUSDT"](ms(x["ts"])), rtol=1e-9)
