"""Market-data collectors against the format drift of real Binance data (issue 12), served by the local
exchange: dated contracts (nextFundingTime 0, estimatedSettlePrice "0.00000000"), funding without a
mark price, metrics with empty fields and 16-decimal values, microsecond kline and funding times."""

from __future__ import annotations

import asyncio
import io
import zipfile
from datetime import UTC, date, datetime
from decimal import Decimal

import aiohttp
import numpy as np
import pandas as pd
from ib_helpers import (
    Tap,
    archive_csv,
    check_book_depth_bands,
    day_ms,
    exchange_config,
    fetch_all,
    make_writer,
    ms,
    settings_for,
)

from microstructure.exchange import FormatConfig, LocalExchange
from microstructure.exchange.archives import COLUMNS, KLINE_TYPES
from microstructure.ingest.binance.rest import BinanceRest
from microstructure.ingest.collectors.book import collect_book_historical
from microstructure.ingest.collectors.market import collect_market_historical, collect_market_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


async def raw_csv(base_url: str, kind: str, symbol: str, when: str, period: str = "daily") -> pd.DataFrame:
    """An archive read by pandas as text (every field a string, empty fields ''): the oracle."""
    if kind in KLINE_TYPES:
        path = f"{kind}/{symbol}/1m/{symbol}-1m-{when}"
    else:
        path = f"{kind}/{symbol}/{symbol}-{kind}-{when}"
    async with aiohttp.ClientSession() as s, s.get(f"{base_url}/data/futures/um/{period}/{path}.zip") as r:
        assert r.status == 200, path
        data = await r.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        text = z.read(z.namelist()[0]).decode()
    names = COLUMNS["klines" if kind in KLINE_TYPES else kind].split(",")
    header = 0 if not text[:1].isdigit() else None
    return pd.read_csv(io.StringIO(text), header=header, names=names, dtype=str, keep_default_na=False)


def exact(values: pd.Series) -> list[float | None]:
    """Text -> the double Python's float() gives (correctly rounded), '' -> None."""
    return [None if v == "" else float(v) for v in values]


def test_dated_contracts_and_funding_without_mark_price_live(db_url, ib_cache, tmp_path) -> None:
    fmt = FormatConfig(dated_symbols=("ETHUSDT",), funding_mark_price="empty")

    async def go():
        cfg = exchange_config(ib_cache, history_days=1, live_rate=5.0, formats=fmt)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            rest = BinanceRest(ex.base_url)
            await rest.open()
            tap = Tap(ex.ws_url, [f"{s.lower()}@markPrice@1s" for s in SYMBOLS])
            await tap.start()
            report = await collect_market_live(
                settings, db_url, SYMBOLS, live_seconds=4.5, writer=writer, rest=rest, oi_interval=60.0
            )
            await tap.stop()
            await writer.close()
            await rest.close()
            return report, tap.messages

    report, sent = asyncio.run(go())
    assert report.ok and report.malformed == 0
    marks = asyncio.run(fetch_all(db_url, "SELECT * FROM mark_prices ORDER BY symbol, ts"))
    by_key = {(r["symbol"], ms(r["ts"])): r for r in marks}
    seen = {s: 0 for s in SYMBOLS}
    for _, d in sent:
        r = by_key.get((d["s"], d["E"]))
        if r is None:
            continue  # sent before the collector listened
        seen[d["s"]] += 1
        assert (r["mark_price"], r["index_price"]) == (float(d["p"]), float(d["i"]))
        if d["s"] == "ETHUSDT":  # the dated contract: "not applicable" is NULL, not 1970-01-01 and 0.0
            assert (d["T"], d["P"], d["r"]) == (0, "0.00000000", "")
            assert (r["next_funding_ts"], r["est_settle_price"], r["funding_rate"]) == (None, None, None)
        else:
            assert ms(r["next_funding_ts"]) == d["T"] > 0
            assert (r["est_settle_price"], r["funding_rate"]) == (float(d["P"]), float(d["r"]))
    assert seen["ETHUSDT"] >= 2 and seen["BTCUSDT"] >= 2
    # settled funding: the perpetual's, with markPrice "" stored as NULL; the dated contract has none
    funding = asyncio.run(fetch_all(db_url, "SELECT * FROM funding_rates ORDER BY funding_ts"))
    assert funding and {f["symbol"] for f in funding} == {"BTCUSDT"}
    assert all(f["mark_price"] is None and f["funding_rate"] is not None for f in funding)


def test_metrics_with_empty_fields_sixteen_decimals_and_microsecond_times(db_url, ib_cache, tmp_path) -> None:
    fmt = FormatConfig(
        metrics_empty=0.2, archive_decimals=16, archive_time_unit="us", funding_mark_price="absent"
    )
    first, last = date(2024, 2, 27), date(2024, 2, 28)

    async def go():
        cfg = exchange_config(
            ib_cache, history_days=12, live_rate=None, trades_per_day=2_000, formats=fmt,
            clock_start=datetime(2024, 3, 3, 6, 0, 5, tzinfo=UTC),
        )  # fmt: skip
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            report = await collect_market_historical(
                settings, db_url, ["BTCUSDT"], first, last, writer=writer
            )
            await writer.close()
            csvs = {
                "metrics": await raw_csv(ex.base_url, "metrics", "BTCUSDT", "2024-02-28"),
                "mark": await raw_csv(ex.base_url, "markPriceKlines", "BTCUSDT", "2024-02-28"),
                "funding": await raw_csv(ex.base_url, "fundingRate", "BTCUSDT", "2024-02", "monthly"),
            }
            return report, csvs

    report, csvs = asyncio.run(go())
    assert report.ok and report.malformed == 0 and not report.failed
    assert any("microseconds" in note for note in report.format_notes)

    # metrics: every row kept, empty fields NULL, 16-decimal values exactly as float() reads them
    m = csvs["metrics"]
    empty = m["count_toptrader_long_short_ratio"] == ""
    assert 0 < empty.sum() < len(m) and (m["sum_open_interest"] == "").sum() > 0
    got = asyncio.run(
        fetch_all(
            db_url, "SELECT * FROM futures_metrics WHERE ts >= '2024-02-28' AND ts < '2024-02-29' ORDER BY ts"
        )
    )
    assert len(got) == len(m) == 288
    assert [r["ts"] for r in got] == pd.to_datetime(m["create_time"], utc=True).tolist()
    for c in m.columns.drop(["create_time", "symbol"]):
        assert [r[c] for r in got] == exact(m[c]), c
    full = m[m["sum_taker_long_short_vol_ratio"] != ""]
    assert all(len(v.split(".")[1]) == 16 for v in full["sum_taker_long_short_vol_ratio"])
    # open interest: the rows that have one (an empty open interest has nothing to store)
    oi = asyncio.run(
        fetch_all(
            db_url,
            "SELECT * FROM open_interest WHERE source = 'metrics' AND ts >= '2024-02-28' AND ts < '2024-02-29' "
            "ORDER BY ts",
        )
    )
    has_oi = m[m["sum_open_interest"] != ""]
    assert [r["ts"] for r in oi] == pd.to_datetime(has_oi["create_time"], utc=True).tolist()
    assert [r["open_interest"] for r in oi] == exact(has_oi["sum_open_interest"])
    assert [r["open_interest_value"] for r in oi] == exact(has_oi["sum_open_interest_value"])

    # klines and funding with 16-digit microsecond times land on their milliseconds
    k = csvs["mark"]
    assert all(len(v) == 16 for v in k["open_time"])
    klines = asyncio.run(
        fetch_all(
            db_url,
            "SELECT * FROM price_klines WHERE kind = 'mark' AND ts >= '2024-02-28' AND ts < '2024-02-29' ORDER BY ts",
        )
    )
    assert [ms(r["ts"]) for r in klines] == [int(v) // 1000 for v in k["open_time"]]
    assert [ms(r["close_ts"]) for r in klines] == [int(v) // 1000 for v in k["close_time"]]
    assert [r["close"] for r in klines] == exact(k["close"])
    f = csvs["funding"]
    f = f[[day_ms(first) <= int(v) // 1000 < day_ms(last) + 86_400_000 for v in f["calc_time"]]]
    funding = asyncio.run(fetch_all(db_url, "SELECT * FROM funding_rates ORDER BY funding_ts"))
    assert [ms(r["funding_ts"]) for r in funding] == [int(v) // 1000 for v in f["calc_time"]]
    assert [r["funding_rate"] for r in funding] == exact(f["last_funding_rate"])
    assert all(
        r["mark_price"] is None for r in funding
    )  # REST rows without a markPrice: NULL, as the archive's
    assert np.all(np.diff([ms(r["funding_ts"]) for r in funding]) > 0)


def test_2026_book_depth_bands_are_stored_exactly(db_url, ib_cache, tmp_path) -> None:
    async def go():
        cfg = exchange_config(
            ib_cache, history_days=2, live_rate=None, trades_per_day=2_000,
            clock_start=datetime(2026, 3, 6, 6, 0, 5, tzinfo=UTC), formats=FormatConfig(book_depth_bands=12),
        )  # fmt: skip
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            report = await collect_book_historical(
                settings, db_url, ["ETHUSDT"], date(2026, 3, 4), date(2026, 3, 5)
            )
            text = await raw_csv(ex.base_url, "bookDepth", "ETHUSDT", "2026-03-05")
            frame = await archive_csv(ex.base_url, "bookDepth", "ETHUSDT", "2026-03-05")
            return report, text, frame

    report, text, frame = asyncio.run(go())
    assert report.ok and report.rows["ETHUSDT"] == 2 * 2880 * 12
    bands = asyncio.run(fetch_all(db_url, "SELECT DISTINCT percentage FROM book_depth_bands ORDER BY 1"))
    assert [str(r["percentage"]) for r in bands] == sorted(set(text["percentage"]), key=Decimal)
    assert [str(r["percentage"]) for r in bands] == [
        "-5.00", "-4.00", "-3.00", "-2.00", "-1.00", "-0.20", "0.20", "1.00", "2.00", "3.00", "4.00", "5.00"
    ]  # fmt: skip
    n = asyncio.run(
        fetch_all(
            db_url, "SELECT count(*) AS n FROM book_depth_bands WHERE percentage = 0.2 AND ts >= '2026-03-05'"
        )
    )
    assert n[0]["n"] == 2880  # the query that found nothing while the column was real
    check_book_depth_bands(db_url, "ETHUSDT", "2026-03-05", frame)
