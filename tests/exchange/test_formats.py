"""Format variants the local exchange serves on request (FormatConfig): what real Binance files and
replies do that its defaults do not (issue 12). Each is read back here as raw bytes / JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from datetime import UTC, date, datetime

import aiohttp
import pytest
from exchange_helpers import fetch, fetch_bytes

from microstructure.exchange import ExchangeThread, FormatConfig
from microstructure.exchange.archives import COLUMNS

AGG_HEADER = COLUMNS["aggTrades"]
DAY = "2024-03-05"
T0 = int(datetime(2024, 3, 5, tzinfo=UTC).timestamp() * 1000)


def rows(ex, kind: str, symbol: str = "BTCUSDT", day: str = DAY, period: str = "daily") -> list[list[str]]:
    status, data = fetch_bytes(ex.archive_url(kind, symbol, day, period))
    assert status == 200, (kind, day)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    return list(csv.reader(io.StringIO(text)))


def test_microseconds_headers_booleans_and_the_extra_column(tmp_cfg) -> None:
    fmt = FormatConfig(archive_time_unit="us", archive_booleans="title", archive_extra_column=True)
    cfg = tmp_cfg(
        clock_start=datetime(2024, 3, 6, 1, tzinfo=UTC), history_days=8, trades_per_day=5_000, formats=fmt
    )
    with ExchangeThread(cfg) as ex:
        agg = rows(ex, "aggTrades")
        assert agg[0] == [*AGG_HEADER.split(","), "is_best_match"]
        body = agg[1:]
        assert all(len(r) == 8 and len(r[5]) == 16 for r in body)
        assert {r[6] for r in body} == {"True", "False"} and {r[7] for r in body} == {"True"}
        ts_ms = [int(r[5]) // 1000 for r in body]
        assert all(T0 <= t < T0 + 86_400_000 for t in ts_ms)
        # the same trades as REST serves, to the millisecond
        _, _, page = fetch(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=body[0][0], limit=50)
        assert [p["T"] for p in page] == ts_ms[:50] and [str(p["a"]) for p in page] == [
            r[0] for r in body[:50]
        ]
        kl = rows(ex, "markPriceKlines")
        assert (
            len(kl[1][0]) == 16 and int(kl[1][0]) == T0 * 1000 and int(kl[1][6]) == (T0 + 59_999) * 1000 + 999
        )
        funding = rows(ex, "fundingRate", day="2024-02", period="monthly")
        assert funding[0] == COLUMNS["fundingRate"].split(",")
        assert len(funding) > 1 and all(len(r[0]) == 16 for r in funding[1:])
    never = tmp_cfg(
        clock_start=datetime(2024, 3, 6, 1, tzinfo=UTC),
        history_days=1,
        formats=FormatConfig(archive_headers="never"),
    )
    with ExchangeThread(never) as ex:
        assert rows(ex, "aggTrades")[0][0].isdigit() and rows(ex, "metrics")[0][0][:2] == "20"
    always = tmp_cfg(
        clock_start=datetime(2021, 3, 6, 1, tzinfo=UTC),
        history_days=1,
        formats=FormatConfig(archive_headers="always"),
    )
    with ExchangeThread(always) as ex:
        assert rows(ex, "aggTrades", day="2021-03-05")[0] == AGG_HEADER.split(",")


def test_spot_format_file_on_one_day_only(tmp_cfg) -> None:
    cfg = tmp_cfg(
        clock_start=datetime(2024, 3, 6, 1, tzinfo=UTC),
        history_days=2,
        formats=FormatConfig(spot_archive_days=(DAY,)),
    )
    with ExchangeThread(cfg) as ex:
        spot = rows(ex, "aggTrades")
        assert spot[0][0].isdigit()  # no header
        assert all(
            len(r) == 8 and len(r[5]) == 16 and r[6] in ("True", "False") and r[7] == "True" for r in spot
        )
        other = rows(ex, "aggTrades", day="2024-03-04")
        assert other[0] == AGG_HEADER.split(",") and len(other[1]) == 7


def test_2026_book_depth_bands_empty_metrics_and_sixteen_decimals(tmp_cfg) -> None:
    fmt = FormatConfig(book_depth_bands=12, metrics_empty=0.2, archive_decimals=16)
    cfg = tmp_cfg(
        clock_start=datetime(2026, 3, 6, 1, tzinfo=UTC), history_days=1, symbols=("ETHUSDT",), formats=fmt
    )
    with ExchangeThread(cfg) as ex:
        depth = rows(ex, "bookDepth", "ETHUSDT", "2026-03-05")
        assert depth[0] == COLUMNS["bookDepth"].split(",")
        assert [r[1] for r in depth[1:13]] == [
            "-5.00", "-4.00", "-3.00", "-2.00", "-1.00", "-0.20", "0.20", "1.00", "2.00", "3.00", "4.00", "5.00"
        ]  # fmt: skip
        assert len(depth) - 1 == 2880 * 12
        assert all(len(r[2].split(".")[1]) == 16 for r in depth[1:50])
        assert float(depth[6][2]) < float(depth[5][2])  # +-0.20 % holds less than +-1 %
        metrics = rows(ex, "metrics", "ETHUSDT", "2026-03-05")[1:]
        ratios_empty = [r for r in metrics if r[4:] == ["", "", "", ""]]
        oi_empty = [r for r in ratios_empty if r[2] == r[3] == ""]
        assert 0.1 * 288 < len(ratios_empty) < 0.3 * 288 and 0 < len(oi_empty) < len(ratios_empty)
        full = [r for r in metrics if "" not in r]
        assert len(full) == 288 - len(ratios_empty)
        assert all(len(r[4].split(".")[1]) == 16 for r in full)


def test_dated_contracts_and_funding_without_mark_price(tmp_cfg) -> None:
    fmt = FormatConfig(dated_symbols=("ETHUSDT",), funding_mark_price="empty")
    cfg = tmp_cfg(clock_start=datetime(2024, 3, 6, 1, tzinfo=UTC), history_days=2, live_rate=5.0, formats=fmt)
    with ExchangeThread(cfg) as ex:
        _, _, eth = fetch(ex, "/fapi/v1/premiumIndex", symbol="ETHUSDT")
        assert (eth["nextFundingTime"], eth["estimatedSettlePrice"], eth["lastFundingRate"]) == (
            0,
            "0.00000000",
            "",
        )
        assert float(eth["markPrice"]) > 0
        _, _, btc = fetch(ex, "/fapi/v1/premiumIndex", symbol="BTCUSDT")
        assert btc["nextFundingTime"] > 0 and float(btc["estimatedSettlePrice"]) > 0
        _, _, info = fetch(ex, "/fapi/v1/exchangeInfo")
        kinds = {s["symbol"]: (s["contractType"], s["deliveryDate"]) for s in info["symbols"]}
        assert kinds["BTCUSDT"][0] == "PERPETUAL"
        assert kinds["ETHUSDT"][0] == "CURRENT_QUARTER"
        delivery = datetime.fromtimestamp(kinds["ETHUSDT"][1] / 1000, tz=UTC)
        assert (delivery.date(), delivery.hour) == (date(2024, 3, 29), 8)  # last Friday of the quarter
        _, _, funding = fetch(ex, "/fapi/v1/fundingRate", symbol="BTCUSDT", limit=5)
        assert funding and all(r["markPrice"] == "" for r in funding)
        assert fetch(ex, "/fapi/v1/fundingRate", symbol="ETHUSDT")[2] == []
        assert fetch_bytes(ex.archive_url("fundingRate", "ETHUSDT", "2024-02", "monthly"))[0] == 404

        async def marks() -> dict[str, dict]:
            got: dict[str, dict] = {}
            url = ex.ws_url + "/stream?streams=btcusdt@markPrice@1s/ethusdt@markPrice@1s"
            async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
                while len(got) < 2:
                    msg = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
                    got[msg["data"]["s"]] = msg["data"]
            return got

        got = asyncio.run(marks())
        assert (got["ETHUSDT"]["T"], got["ETHUSDT"]["P"], got["ETHUSDT"]["r"]) == (0, "0.00000000", "")
        assert got["BTCUSDT"]["T"] > 0 and float(got["BTCUSDT"]["P"]) > 0
    absent = tmp_cfg(
        clock_start=datetime(2024, 3, 6, 1, tzinfo=UTC),
        history_days=1,
        formats=FormatConfig(funding_mark_price="absent"),
    )
    with ExchangeThread(absent) as ex:
        _, _, funding = fetch(ex, "/fapi/v1/fundingRate", symbol="BTCUSDT", limit=3)
        assert funding and all(set(r) == {"symbol", "fundingTime", "fundingRate"} for r in funding)


def test_format_variants_change_the_archive_cache_key(tmp_cfg) -> None:
    assert FormatConfig().archive_tag() == "" and FormatConfig(dated_symbols=("X",)).archive_tag() == ""
    assert (
        FormatConfig(archive_time_unit="us").archive_tag() != FormatConfig(book_depth_bands=12).archive_tag()
    )
    with pytest.raises(ValueError, match="archive_time_unit: expected one of ms, us, got 's'"):
        FormatConfig(archive_time_unit="s")
    with pytest.raises(ValueError, match="book_depth_bands"):
        FormatConfig(book_depth_bands=11)
