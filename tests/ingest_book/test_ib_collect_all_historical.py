"""`microstructure collect all --mode historical` through the CLI against the local exchange: every
table it loads holds the rows of the archives (read here by pandas), and a day whose archives are not
published comes from REST (aggregate trades, openInterestHist). The features over the backfill: mark,
index, premium from the archives' 1m klines and the settled funding on every bar (docs/FEATURES.md
"Market")."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
from ib_helpers import (
    archive_csv,
    check_agg_trades,
    check_band_features,
    check_book_depth_bands,
    check_funding_archive,
    check_klines,
    check_metrics,
    day_ms,
    exchange_config,
    fetch_all,
    ms,
    stored,
)

from microstructure.cli import main
from microstructure.exchange import ExchangeThread

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DAY = 86_400_000
ARCHIVED = ("2024-02-28", "2024-02-29")
UNPUBLISHED = "2024-03-01"  # its archives answer 404
KLINES = {"markPriceKlines": "mark", "indexPriceKlines": "index", "premiumIndexKlines": "premium"}


def test_collect_all_historical_through_the_cli(db_url, ib_cache, tmp_path, capsys) -> None:
    cfg = exchange_config(
        ib_cache,
        history_days=3,
        live_rate=None,
        trades_per_day=2_000,
        clock_start=datetime(2024, 3, 2, 6, 0, 5, tzinfo=UTC),
    )
    cfg.faults.missing_archive_days = (UNPUBLISHED,)
    with ExchangeThread(cfg) as ex:
        rc = main(
            [
                "--database-url", db_url, "--home", str(tmp_path), "collect", "all", "--symbol",
                "BTCUSDT,ETHUSDT", "--mode", "historical", "--start", "2024-02-28", "--end", UNPUBLISHED,
                "--exchange-url", ex.base_url,
            ]
        )  # fmt: skip
        out = capsys.readouterr().out
        ex.config.faults.missing_archive_days = ()  # what the archives hold, for the comparisons

        async def fetch():
            csvs = {}
            for s in SYMBOLS:
                csvs[(s, "fundingRate")] = await archive_csv(
                    ex.base_url, "fundingRate", s, "2024-02", "monthly"
                )
                for d in (*ARCHIVED, UNPUBLISHED):
                    csvs[(s, "aggTrades", d)] = await archive_csv(ex.base_url, "aggTrades", s, d)
                for d in ARCHIVED:
                    for kind in ("bookDepth", "metrics", *KLINES):
                        csvs[(s, kind, d)] = await archive_csv(ex.base_url, kind, s, d)
            return csvs

        csvs = asyncio.run(fetch())
        fundings = {
            s: ex.markets[s].fundings(day_ms("2024-02-28"), day_ms(UNPUBLISHED) + DAY) for s in SYMBOLS
        }
        oi_at = {s: ex.markets[s].oi_at for s in SYMBOLS}
    assert rc == 0, out
    assert "collect all (historical)" in out

    for s in SYMBOLS:
        # aggregate trades: archives for the published days, REST for the other, all equal to the archive
        for d in (*ARCHIVED, UNPUBLISHED):
            check_agg_trades(db_url, s, d, csvs[(s, "aggTrades", d)])
        ids = [
            r["agg_id"]
            for r in asyncio.run(
                fetch_all(db_url, "SELECT agg_id FROM agg_trades WHERE symbol = $1 ORDER BY 1", s)
            )
        ]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        # bookDepth bands, metrics (futures_metrics + open_interest), 1m mark/index/premium klines
        for d in ARCHIVED:
            check_book_depth_bands(db_url, s, d, csvs[(s, "bookDepth", d)])
            check_band_features(db_url, s, d, csvs[(s, "bookDepth", d)])  # the refresh after the load
            check_metrics(db_url, s, d, csvs[(s, "metrics", d)])
            for kind, name in KLINES.items():
                check_klines(db_url, s, d, name, csvs[(s, kind, d)])
        # the unpublished day: no bands or klines to load; open interest from openInterestHist
        for table in ("book_depth_bands", "futures_metrics", "price_klines"):
            n = asyncio.run(
                fetch_all(
                    db_url,
                    f"SELECT count(*) AS n FROM {table} WHERE symbol = $1 AND ts >= $2::date",
                    s,
                    date(2024, 3, 1),
                )
            )[0]["n"]
            assert n == 0, table
        # and today's, which no archive has yet, from openInterestHist up to the run's time (06:00)
        hist = asyncio.run(
            fetch_all(
                db_url, "SELECT * FROM open_interest WHERE symbol = $1 AND ts >= '2024-03-01' ORDER BY ts", s
            )
        )
        assert [ms(r["ts"]) for r in hist] == list(
            range(day_ms(UNPUBLISHED), day_ms("2024-03-02") + 6 * 3_600_000 + 1, 300_000)
        )
        assert {r["source"] for r in hist} == {"hist"}
        for r in hist:
            assert np.isclose(r["open_interest"], oi_at[s](ms(r["ts"])), rtol=1e-9)
        # funding: February's settlements from the monthly archive (and REST), March's from REST
        check_funding_archive(db_url, s, csvs[(s, "fundingRate")], day_ms("2024-02-28"), day_ms(UNPUBLISHED))
        T, r, _ = fundings[s]
        got = asyncio.run(
            fetch_all(db_url, "SELECT * FROM funding_rates WHERE symbol = $1 ORDER BY funding_ts", s)
        )
        assert [(ms(x["funding_ts"]), x["funding_rate"]) for x in got] == [
            (int(t), float(f"{v:.8f}")) for t, v in zip(T, r, strict=True)
        ]
        assert len(got) >= 8  # from 08:00 on the first day (the exchange's history starts at midnight)

    assert main(["--database-url", db_url, "features", "refresh"]) == 0
    for s in SYMBOLS:
        check_market_features(db_url, s, csvs, fundings[s])


def check_market_features(db_url: str, s: str, csvs: dict, funding: tuple) -> None:
    """Every bar of the archived days: mark / index the close of the bar's last minute of the mark /
    index kline archives, the premium from the two, funding the last settlement before the bar's end
    (from the exchange's own schedule), no predicted rate (no mark stream was collected)."""
    closes = {}
    for kind, name in (("markPriceKlines", "mark"), ("indexPriceKlines", "index")):
        k = pd.concat([csvs[(s, kind, d)] for d in ARCHIVED])
        closes[name] = pd.Series(k["close"].to_numpy(float), index=k["open_time"].to_numpy(np.int64))
    T, r, _ = funding
    T = np.asarray(T, np.int64)
    for width in (1, 5, 15):
        got = stored(
            db_url,
            f"SELECT bucket, mark_price, index_price, spot_premium_pct, funding_rate, funding_rate_predicted "
            f"FROM features_{width}m WHERE symbol = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket",
            s, datetime(2024, 2, 28, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC),
        )  # fmt: skip
        assert len(got) == 2 * 1440 // width
        start = np.array([ms(t) for t in got["bucket"]], np.int64)
        last_minute = start + (width - 1) * 60_000
        mark = closes["mark"].reindex(last_minute).to_numpy()
        index = closes["index"].reindex(last_minute).to_numpy()
        assert np.array_equal(got["mark_price"].to_numpy(float), mark) and not np.isnan(mark).any()
        assert np.array_equal(got["index_price"].to_numpy(float), index) and not np.isnan(index).any()
        assert np.allclose(got["spot_premium_pct"].to_numpy(float), (mark - index) / index * 100, rtol=1e-12)
        settled = np.searchsorted(T, start + width * 60_000, side="left") - 1
        rates = np.array([float(f"{v:.8f}") for v in r])  # as stored (the archive's digits)
        want = np.where(settled >= 0, rates[np.maximum(settled, 0)], np.nan)
        assert np.array_equal(got["funding_rate"].to_numpy(float), want, equal_nan=True)
        assert not np.isnan(want[start >= T[0]]).any()  # every bar after the first settlement
        assert got["funding_rate_predicted"].isna().all()
