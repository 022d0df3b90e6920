"""Archive download (sha256, 404, cache) and CSV parsing (header detection, disorder, malformed rows)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from ih_helpers import generator_trades

from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import LocalExchange
from microstructure.ingest.binance import archives as A
from microstructure.ingest.records import AGG_TRADES

HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
ROWS = [
    "100,64000.10,0.005,1000,1001,1660003200123,true",
    "101,64000.20,1.250,1002,1002,1660003200456,false",
    "102,63999.90,0.010,1003,1005,1660003201000,true",
]
EXPECTED = {
    "agg_id": [100, 101, 102],
    "ts_ms": [1660003200123, 1660003200456, 1660003201000],
    "price": [64000.10, 64000.20, 63999.90],
    "quantity": [0.005, 1.25, 0.010],
    "first_trade_id": [1000, 1002, 1003],
    "last_trade_id": [1001, 1002, 1005],
    "is_buyer_maker": [True, False, True],
    "recv_ms": [None, None, None],
}


def make_zip(csv_text: str, name: str = "BTCUSDT-aggTrades-2022-08-09.csv") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, csv_text)
    return out.getvalue()


@pytest.mark.parametrize("header", [True, False])
def test_header_and_headerless_files_parse_the_same(header: bool) -> None:
    text = "\n".join(([HEADER] if header else []) + ROWS) + "\n"
    arc = A.parse_aggtrades_zip(make_zip(text))
    assert arc.header is header
    assert arc.table.schema == AGG_TRADES
    assert arc.table.to_pydict() == EXPECTED
    assert (arc.malformed, arc.duplicates, arc.reordered, arc.first_id, arc.last_id) == (
        0,
        0,
        False,
        100,
        102,
    )


def _many_rows(n: int) -> str:
    rng = np.random.default_rng(5)
    price = 64000 + np.cumsum(rng.normal(0, 0.5, n)).round(1)
    ts = 1660003200000 + np.sort(rng.integers(0, 86_400_000, n))
    return "".join(
        f"{100 + i},{p:.1f},{q:.3f},{1000 + 2 * i},{1001 + 2 * i},{t},{'true' if b else 'false'}\n"
        for i, (p, q, t, b) in enumerate(
            zip(price, rng.uniform(0.001, 2, n), ts, rng.random(n) < 0.5, strict=True)
        )
    )


def test_a_deflated_member_inflated_in_many_reads_parses_as_the_stored_one(tmp_path: Path) -> None:
    """The ISA-L stream (a deflated member, read from a path or bytes, several MB in 1 MB pieces) gives
    what zipfile's own reading of a stored member gives."""
    text = HEADER + "\n" + _many_rows(120_000)
    deflated = make_zip(text)
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("BTCUSDT-aggTrades-2022-08-09.csv", text)
    path = tmp_path / "a.zip"
    path.write_bytes(deflated)
    assert len(text) > 6 * A.INFLATE_READ and len(deflated) > A.INFLATE_READ  # many compressed reads
    want = A.parse_aggtrades_zip(stored.getvalue())
    assert want.table.num_rows == 120_000 and want.malformed == 0
    for source in (deflated, path):
        got = A.parse_aggtrades_zip(source)
        assert got.table.equals(want.table) and got.header and got.malformed == 0


def test_a_member_that_does_not_inflate_to_what_the_zip_says_is_one_clear_error() -> None:
    good = make_zip(HEADER + "\n" + _many_rows(5_000))
    info = zipfile.ZipFile(io.BytesIO(good)).infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode())  # no extra field: writestr adds none
    # a flipped byte in the middle of the deflate data: a broken stream or a CRC that does not match
    broken = bytearray(good)
    broken[start + info.compress_size // 2] ^= 0xFF
    with pytest.raises(
        A.ArchiveError, match=r"BTCUSDT-aggTrades-2022-08-09.csv (does not inflate|inflates to)"
    ):
        A.parse_aggtrades_zip(bytes(broken), url="https://x/BTCUSDT-aggTrades-2022-08-09.zip")
    # the right stream, the CRC the central directory holds changed
    central = good.rindex(b"PK\x01\x02")
    crc = bytearray(good)
    crc[central + 16] ^= 0x01
    with pytest.raises(
        A.ArchiveError, match=r"inflates to [\d,]+ bytes with CRC-32 [0-9a-f]{8}, the zip says"
    ):
        A.parse_aggtrades_zip(bytes(crc))


def test_header_is_detected_by_content_not_by_date_and_capitalised_booleans() -> None:
    # a headerless file "after" 2022-08-11 and a header with another column order
    rows = [r.replace("true", "True").replace("false", "False") for r in ROWS]
    plain = A.parse_archive_csv("aggTrades", ("\n".join(rows) + "\n").encode())
    assert not plain.header and plain.table.column("is_buyer_maker").to_pylist() == [True, False, True]
    cols = HEADER.split(",")
    order = [6, 0, 1, 2, 3, 4, 5]
    shuffled = [",".join(cols[i] for i in order)] + [",".join(r.split(",")[i] for i in order) for r in ROWS]
    parsed = A.parse_archive_csv("aggTrades", io.BytesIO(("\r\n".join(shuffled) + "\r\n").encode()))
    assert parsed.header
    assert parsed.table.column("agg_trade_id").to_pylist() == [100, 101, 102]
    assert parsed.table.column("is_buyer_maker").to_pylist() == [True, False, True]


def test_monthly_disorder_and_duplicates_are_sorted_and_removed() -> None:
    rng = np.random.default_rng(7)
    ids = np.arange(5000, 8000)
    lines = [
        f"{i},{100 + i % 97}.5,0.{i % 9 + 1},{i * 2},{i * 2 + 1},{1660000000000 + i * 10},{'true' if i % 3 else 'false'}"
        for i in ids
    ]
    dup = rng.choice(len(lines), 40, replace=False)
    shuffled = [lines[i] for i in rng.permutation(len(lines))] + [lines[i] for i in dup]
    arc = A.parse_aggtrades_zip(make_zip("\n".join(shuffled) + "\n"))
    assert arc.rows == 3000 and arc.duplicates == 40 and arc.conflicting_duplicates == 0 and arc.reordered
    assert arc.table.column("agg_id").to_pylist() == ids.tolist()
    assert arc.table.column("ts_ms").to_pylist() == (1660000000000 + ids * 10).tolist()
    assert arc.missing_ids() == 0


def test_malformed_rows_are_counted_logged_with_their_text_and_the_rest_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = [
        "103,64000.00,0.001,1006",  # too few columns
        "104,64000.00,abc,1007,1007,1660003202000,true",  # not a number
        "105,64000.00,0.002,1008,1008,1660003203000,maybe",  # not a boolean
        "106,64000.00,,1009,1009,1660003204000,false",  # empty field
        "107,64000.00,0.003,1010,1010,1660003205000,true,extra",  # too many columns
    ]
    text = "\n".join([HEADER, ROWS[0], bad[0], ROWS[1], bad[1], bad[2], bad[3], ROWS[2], bad[4]]) + "\n"
    with caplog.at_level(logging.WARNING, logger="microstructure.ingest.binance.archives"):
        arc = A.parse_aggtrades_zip(make_zip(text), url="http://x/BTCUSDT-aggTrades-2022-08-11.zip")
    assert arc.table.to_pydict() == EXPECTED
    assert arc.malformed == 5
    assert sorted(arc.malformed_rows) == sorted(bad)
    logged = [r.getMessage() for r in caplog.records if "malformed row" in r.getMessage()]
    assert len(logged) == 5
    for row in bad:
        assert any(repr(row) in m and "BTCUSDT-aggTrades-2022-08-11.zip" in m for m in logged), row


def test_other_archive_types_have_csv_specs() -> None:
    funding = A.parse_archive_csv(
        "fundingRate", b"calc_time,funding_interval_hours,last_funding_rate\n1704067200000,8,0.00010000\n"
    )
    assert funding.header and funding.table.to_pydict() == {
        "calc_time": [1704067200000],
        "funding_interval_hours": [8],
        "last_funding_rate": [0.0001],
    }
    depth = A.parse_archive_csv("bookDepth", b"2024-01-01 00:00:07,-5,1234.5,79000000.25\n")
    assert not depth.header
    assert depth.table.column("timestamp").to_pylist() == [1704067207000]
    kind, batch = A.archive_records("fundingRate", funding)
    assert kind == "funding_rates" and batch.to_pydict() == {
        "funding_ms": [1704067200000],
        "funding_rate": [0.0001],
        "mark_price": [None],
        "funding_interval_hours": [8],
    }
    metrics = A.parse_archive_csv(
        "metrics", b"2024-01-01 00:05:00,BTCUSDT,80000.5,5000000000.25,1.1,1.2,1.3,0.9\n"
    )
    kind, batch = A.archive_records("metrics", metrics)
    assert kind == "open_interest" and batch.to_pylist() == [
        {
            "ts_ms": 1704067500000,
            "open_interest": 80000.5,
            "open_interest_value": 5000000000.25,
            "source": "metrics",
            "recv_ms": None,  # archive rows did not come live
        }
    ]
    with pytest.raises(NotImplementedError, match="bookDepth"):
        A.archive_records("bookDepth", depth)
    with pytest.raises(ValueError, match="archive type"):
        A.parse_archive_csv("trades", b"")
    assert A.archive_path("markPriceKlines", "btcusdt", "daily", date(2024, 1, 2)) == (
        "data/futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
    )
    assert A.archive_path("aggTrades", "BTCUSDT", "monthly", date(2024, 1, 2)) == (
        "data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01.zip"
    )


def test_download_verifies_checksums_refuses_mismatch_and_reports_missing(
    exchange_cache: Path, tmp_path: Path
) -> None:
    cfg = ExchangeConfig(
        history_days=3,
        trades_per_day=5_000,
        cache_dir=exchange_cache,
        clock_start=datetime(2022, 8, 12, 3, tzinfo=UTC),
        faults=FaultConfig(bad_checksum_days=("2022-08-10",), missing_archive_days=("2022-08-09",)),
    )
    cache = tmp_path / "archives"
    tmp = tmp_path / "tmp"

    async def main() -> None:
        async with LocalExchange(cfg) as ex, aiohttp.ClientSession() as s:
            with pytest.raises(A.ArchiveMissing, match="2022-08-09"):
                await A.load_aggtrades_archive(
                    s, ex.base_url, "BTCUSDT", "daily", date(2022, 8, 9), tmp_dir=tmp
                )
            with pytest.raises(A.ArchiveMissing, match="2022-08-12"):  # today: not published yet
                await A.load_aggtrades_archive(
                    s, ex.base_url, "BTCUSDT", "daily", date(2022, 8, 12), tmp_dir=tmp
                )
            with pytest.raises(A.ChecksumMismatch) as info:
                await A.load_aggtrades_archive(
                    s, ex.base_url, "BTCUSDT", "daily", date(2022, 8, 10), cache_dir=cache, tmp_dir=tmp
                )
            assert "2022-08-10" in str(info.value) and "refused" in str(info.value)
            assert info.value.expected != info.value.actual
            assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing kept of a refused archive

            arc = await A.load_aggtrades_archive(
                s, ex.base_url, "BTCUSDT", "daily", date(2022, 8, 11), cache_dir=cache, tmp_dir=tmp
            )
            url = ex.archive_url("aggTrades", "BTCUSDT", date(2022, 8, 11))
            async with s.get(url) as r:
                body = await r.read()
            assert arc.sha256 == hashlib.sha256(body).hexdigest() and arc.size == len(body)
            assert arc.header  # 2022-08-11: Binance's files have a header from that day on
            t0 = int(datetime(2022, 8, 11, tzinfo=UTC).timestamp() * 1000)
            ref = generator_trades(ex, "BTCUSDT", t0, t0 + 86_400_000)
            got = arc.table.to_pydict()
            for col, values in ref.items():
                assert got[col] == values, col
            cached = cache / "data" / url.split("/data/", 1)[1]
            assert cached.read_bytes() == body
            again = await A.download_archive(s, url, cache_dir=cache)
            assert again.cached and again.path == cached
            assert not list(tmp.glob("*"))  # temporary downloads are removed after parsing

    asyncio.run(main())


def test_monthly_archive_with_disorder_equals_the_days(exchange_cache: Path) -> None:
    cfg = ExchangeConfig(
        history_days=35,
        trades_per_day=600,
        cache_dir=exchange_cache,
        clock_start=datetime(2024, 3, 2, 1, tzinfo=UTC),
        faults=FaultConfig(monthly_disorder=True),
    )

    async def main() -> None:
        async with LocalExchange(cfg) as ex, aiohttp.ClientSession() as s:
            month = await A.load_aggtrades_archive(s, ex.base_url, "BTCUSDT", "monthly", "2024-02")
            assert month.reordered and month.duplicates > 0 and month.conflicting_duplicates == 0
            t0 = int(datetime(2024, 2, 1, tzinfo=UTC).timestamp() * 1000)
            t1 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
            ref = generator_trades(ex, "BTCUSDT", t0, t1)
            assert month.table.column("agg_id").to_pylist() == ref["agg_id"]
            assert month.table.column("price").to_pylist() == ref["price"]

    asyncio.run(main())


# ---------------------------------------------------------------- format drift (issue 12)

US_ROWS = [  # the same trades with 16-digit microsecond times, as Binance's spot archives since 2025
    "100,64000.10,0.005,1000,1001,1660003200123456,true",
    "101,64000.20,1.250,1002,1002,1660003200456999,false",
    "102,63999.90,0.010,1003,1005,1660003201000000,true",
]


@pytest.mark.parametrize("header", [True, False])
def test_microsecond_times_are_detected_per_file_and_stored_as_milliseconds(header: bool) -> None:
    text = "\n".join(([HEADER] if header else []) + US_ROWS) + "\n"
    parsed = A.parse_archive_csv("aggTrades", text.encode())
    assert parsed.time_unit == "us" and parsed.malformed == 0
    assert parsed.table.column("transact_time").to_pylist() == EXPECTED["ts_ms"]
    assert any("microseconds" in n for n in parsed.notes)
    ms = A.parse_archive_csv("aggTrades", ("\n".join(ROWS) + "\n").encode())
    assert ms.time_unit == "ms" and not ms.notes
    klines = A.parse_archive_csv(
        "klines", b"1788566400000000,1.5,1.6,1.4,1.55,0,1788566459999999,0,60,0,0,0\n"
    )
    assert klines.table.column("open_time").to_pylist() == [1788566400000]
    assert klines.table.column("close_time").to_pylist() == [1788566459999]


def test_a_time_in_the_other_unit_or_in_none_is_a_malformed_row_with_the_reason() -> None:
    rows = [
        *ROWS,
        "103,64000.00,0.001,1006,1006,1660003200123456,true",  # 16 digits in a millisecond file
        "104,64000.00,0.001,1007,1007,1660003200,true",  # 10 digits: seconds, neither unit
    ]
    parsed = A.parse_archive_csv("aggTrades", ("\n".join(rows) + "\n").encode())
    assert parsed.time_unit == "ms" and parsed.table.column("agg_trade_id").to_pylist() == [100, 101, 102]
    assert parsed.malformed_rows == rows[3:]
    assert parsed.malformed_reasons == [
        "column transact_time: expected a 13-digit epoch time in milliseconds like the file's other rows, "
        "got 1660003200123456 (16 digits)",
        "column transact_time: expected an epoch time of 13 digits (milliseconds) or 16 digits "
        "(microseconds), got '1660003200' (10 digits)",
    ]


def test_malformed_rows_say_which_column_and_what_was_expected() -> None:
    bad = {
        "103,64000.00,0.001,1006": "4 fields, expected 7 (" + HEADER + ")",
        "104,64000.00,abc,1007,1007,1660003202000,true": "column quantity: expected a number, got 'abc'",
        "105,64000.00,0.002,1008,1008,1660003203000,maybe": "column is_buyer_maker: expected true or false, "
        "got 'maybe'",
        "106,64000.00,,1009,1009,1660003204000,false": "column quantity: empty, expected a number",
        "x07,64000.00,0.003,1010,1010,1660003205000,true": "column agg_trade_id: expected an integer, got 'x07'",
    }
    parsed = A.parse_archive_csv("aggTrades", ("\n".join([HEADER, *ROWS, *bad]) + "\n").encode())
    assert dict(zip(parsed.malformed_rows, parsed.malformed_reasons, strict=True)) == bad
    assert parsed.rows == 3 and parsed.failure() is not None  # 5 of 8 rows: far more than 1 %


def test_a_spot_file_fails_every_row_with_the_reason_and_the_file_as_a_whole() -> None:
    # Binance's spot aggTrades: no header, 8 fields (is_best_match), True/False, microsecond times
    spot = [r.replace("true", "True").replace("false", "False") + ",True" for r in US_ROWS]
    parsed = A.parse_archive_csv("aggTrades", ("\n".join(spot) + "\n").encode())
    assert parsed.rows == 0 and parsed.malformed == 3 and parsed.malformed_rows == spot
    assert all(
        r.startswith("8 fields, expected 7") and "spot aggTrades layout" in r
        for r in parsed.malformed_reasons
    )
    failure = parsed.failure()
    assert failure is not None and failure.startswith(
        "no valid row (3 malformed; first: 8 fields, expected 7"
    )


def test_an_extra_column_the_header_names_is_ignored_with_a_note() -> None:
    text = "\n".join([HEADER + ",is_best_match"] + [r.replace("true", "True") + ",True" for r in ROWS]) + "\n"
    parsed = A.parse_archive_csv("aggTrades", text.encode())
    assert parsed.malformed == 0 and parsed.failure() is None
    assert parsed.notes == ["column is_best_match ignored (not one of the aggTrades columns)"]
    arc = A.parse_aggtrades_zip(make_zip(text))
    assert arc.table.to_pydict() == EXPECTED and arc.notes == parsed.notes


def test_empty_metrics_fields_are_null_and_sixteen_decimals_parse_exactly() -> None:
    text = (
        "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
        "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio\n"
        "2026-01-01 00:05:00,BTCUSDT,80000.5,5000000000.25,1.1234567890123457,,1.3,0.9876543210987654\n"
        "2026-01-01 00:10:00,BTCUSDT,,,,,,\n"
        "2026-01-01 00:15:00,BTCUSDT,80001.0000000000000001,,0.3000000000000000444,1.2,1.3,0.9\n"
    )
    parsed = A.parse_archive_csv("metrics", text.encode())
    assert parsed.malformed == 0 and parsed.rows == 3
    t = parsed.table.to_pydict()
    assert t["sum_toptrader_long_short_ratio"] == [None, None, 1.2]
    assert t["sum_open_interest"] == [80000.5, None, float("80001.0000000000000001")]
    assert t["count_toptrader_long_short_ratio"] == [1.1234567890123457, None, float("0.3000000000000000444")]
    assert t["sum_taker_long_short_vol_ratio"] == [0.9876543210987654, None, 0.9]
    _, oi = A.archive_records("metrics", parsed)  # no open interest in the second row: nothing to store
    assert oi.column("ts_ms").to_pylist() == [1767225900000, 1767226500000]
    assert oi.column("open_interest_value").to_pylist() == [5000000000.25, None]
    # elsewhere an empty field is still a malformed row
    depth = A.parse_archive_csv(
        "bookDepth", b"2026-01-01 00:00:07,-5.00,,1.0\n2026-01-01 00:00:07,-0.20,1.5,2.5\n"
    )
    assert depth.malformed_reasons == ["column depth: empty, expected a number"]
    assert depth.table.column("percentage").to_pylist() == [-0.2]


def test_the_share_of_malformed_rows_a_file_may_hold() -> None:
    good = [f"{i},1.5,0.1,{i},{i},{1660003200000 + i},true" for i in range(1, 201)]
    one_bad = A.parse_archive_csv(
        "aggTrades", ("\n".join([*good, "201,1.5,x,201,201,1660003200201,true"]) + "\n").encode()
    )
    assert one_bad.malformed == 1 and one_bad.failure() is None  # 1 of 201: under 1 %
    three_bad = A.parse_archive_csv(
        "aggTrades",
        (
            "\n".join([*good] + [f"{i},1.5,x,{i},{i},1660003200201,true" for i in (201, 202, 203)]) + "\n"
        ).encode(),
    )
    assert three_bad.failure() == (
        "3 of 203 rows malformed (1.5%, more than the 1.0% allowed); first: column quantity: expected a number, got 'x'"
    )
    empty = A.parse_archive_csv("aggTrades", (HEADER + "\n").encode())
    assert empty.failure() == "no valid row (0 malformed)"


def test_a_book_depth_band_out_of_range_is_a_malformed_row() -> None:
    text = b"2026-01-01 00:00:07,-0.20,1.5,2.5\n2026-01-01 00:00:07,1234.5,1.5,2.5\n2026-01-01 00:00:07,5.00,1.5,2.5\n"
    depth = A.parse_archive_csv("bookDepth", text)
    assert depth.table.column("percentage").to_pylist() == [-0.2, 5.0]
    assert depth.malformed_reasons == ["column percentage: expected a number from -100 to 100, got '1234.5'"]


async def _parse_in_line(
    turns: list[A.ParseTurn], download_s: list[float], log_: list[tuple[str, int]]
) -> None:
    """Each archive 'downloads' for its time, then parses at its turn (10 ms), as load_aggtrades_archive."""

    async def one(turn: A.ParseTurn, s: float) -> None:
        try:
            await asyncio.sleep(s)
            async with turn:
                log_.append(("start", turn.place))
                await asyncio.sleep(0.01)
                log_.append(("end", turn.place))
        finally:
            turn.give_up()

    await asyncio.gather(*(one(t, s) for t, s in zip(turns, download_s, strict=True)))


def test_archives_parse_in_the_order_asked_whichever_download_ends_first() -> None:
    async def main() -> list[tuple[str, int]]:
        line, log_ = A.ParseTurns(1), []
        await _parse_in_line([line.turn() for _ in range(4)], [0.15, 0.1, 0.0, 0.05], log_)
        return log_

    # the oldest day's download ends last, yet it parses first, and one at a time
    assert asyncio.run(main()) == [(e, p) for p in range(4) for e in ("start", "end")]


def test_a_place_given_up_or_never_started_lets_the_next_parse() -> None:
    async def main() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        line, log_ = A.ParseTurns(1), []
        first, failed, third = line.turn(), line.turn(), line.turn()

        async def fails() -> None:  # a download that fails: its place is given up, never parsed
            try:
                await asyncio.sleep(0.05)
                raise A.ArchiveMissing("404")
            finally:
                failed.give_up()

        never = asyncio.ensure_future(asyncio.sleep(1))  # a prefetch cancelled before it ran
        fourth = line.turn()
        never.add_done_callback(lambda _: fourth.give_up())
        never.cancel()
        fifth = line.turn()
        outcome = await asyncio.gather(
            _parse_in_line([first, third, fifth], [0.1, 0.0, 0.0], log_), fails(), return_exceptions=True
        )
        assert outcome[0] is None and isinstance(outcome[1], A.ArchiveMissing)
        # two slots: the next place starts while the one before still parses
        wide, log2 = A.ParseTurns(2), []
        await _parse_in_line([wide.turn() for _ in range(3)], [0.0, 0.0, 0.0], log2)
        return log_, log2

    log_, log2 = asyncio.run(main())
    assert log_ == [("start", 0), ("end", 0), ("start", 2), ("end", 2), ("start", 4), ("end", 4)]
    assert log2[:2] == [("start", 0), ("start", 1)] and log2.index(("start", 2)) > log2.index(("end", 0))
