"""data.binance.vision-style archives: names, CSV columns, header rule, CHECKSUM, availability."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from datetime import UTC, date, datetime

from exchange_helpers import fetch_bytes

from microstructure.exchange import ExchangeThread
from microstructure.exchange.archives import COLUMNS

AGG_HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"


def open_zip(data: bytes) -> tuple[str, str]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    (name,) = zf.namelist()
    return name, zf.read(name).decode()


def checked(ex, kind: str, symbol: str, day: date | str, period: str = "daily") -> tuple[str, list[str]]:
    url = ex.archive_url(kind, symbol, day, period)
    status, data = fetch_bytes(url)
    assert status == 200, url
    status, checksum = fetch_bytes(url + ".CHECKSUM")
    assert status == 200
    digest, filename = checksum.decode().split()
    assert filename == url.rsplit("/", 1)[1]
    assert digest == hashlib.sha256(data).hexdigest()
    name, text = open_zip(data)
    assert name == filename.removesuffix(".zip") + ".csv"
    return name, text.splitlines()


def test_header_rule_and_daily_agg_trades(tmp_cfg) -> None:
    cfg = tmp_cfg(clock_start=datetime(2022, 8, 12, 12, 0, tzinfo=UTC), history_days=3)
    with ExchangeThread(cfg) as ex:
        assert [d.isoformat() for d in ex.history_dates()] == ["2022-08-09", "2022-08-10", "2022-08-11"]
        _, before = checked(ex, "aggTrades", "BTCUSDT", "2022-08-10")
        _, after = checked(ex, "aggTrades", "BTCUSDT", "2022-08-11")
        assert before[0][0].isdigit()  # no header before 2022-08-11
        assert after[0] == AGG_HEADER
        rows = list(csv.reader(after[1:]))
        assert 10_000 < len(rows) < 40_000
        a = [int(r[0]) for r in rows]
        assert a == list(range(a[0], a[0] + len(a)))
        # the day before ends exactly where this one starts
        assert int(before[-1].split(",")[0]) + 1 == a[0]
        t0 = int(datetime(2022, 8, 11, tzinfo=UTC).timestamp() * 1000)
        assert all(t0 <= int(r[5]) < t0 + 86_400_000 for r in rows)
        assert {r[6] for r in rows} == {"true", "false"}
        assert all(len(r[1].split(".")[1]) == 2 and len(r[2].split(".")[1]) == 3 for r in rows[:100])
        assert all(int(r[3]) <= int(r[4]) for r in rows)
        # today (not ended) and days before the history: S3's NoSuchKey
        for day in ("2022-08-12", "2022-08-08"):
            status, body = fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", day))
            assert status == 404 and b"<Code>NoSuchKey</Code>" in body
        status, body = fetch_bytes(ex.archive_url("aggTrades", "NOPEUSDT", "2022-08-10"))
        assert status == 404
        status, _ = fetch_bytes(ex.base_url + "/data/futures/um/daily/aggTrades/BTCUSDT/garbage.zip")
        assert status == 404


def test_other_daily_types(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=1, symbols=("ETHUSDT",))
    with ExchangeThread(cfg) as ex:
        (day,) = ex.history_dates()
        _, depth = checked(ex, "bookDepth", "ETHUSDT", day)
        assert depth[0] == COLUMNS["bookDepth"]
        rows = list(csv.reader(depth[1:]))
        assert len(rows) == 2880 * 10
        assert [int(r[1]) for r in rows[:10]] == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]
        datetime.strptime(rows[0][0], "%Y-%m-%d %H:%M:%S")
        assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows[:100])
        # cumulative depth grows with the distance from mid
        assert float(rows[0][2]) > float(rows[4][2])

        _, metrics = checked(ex, "metrics", "ETHUSDT", day)
        assert metrics[0] == COLUMNS["metrics"]
        rows = list(csv.reader(metrics[1:]))
        assert len(rows) == 288 and rows[0][1] == "ETHUSDT"
        assert rows[1][0].endswith("00:05:00") and float(rows[0][2]) > 0

        for kind in ("markPriceKlines", "indexPriceKlines", "premiumIndexKlines"):
            name, lines = checked(ex, kind, "ETHUSDT", day)
            assert name == f"ETHUSDT-1m-{day.isoformat()}.csv"
            assert lines[0] == COLUMNS["klines"]
            rows = list(csv.reader(lines[1:]))
            assert len(rows) == 1440
            o, h, lo, c = (float(x) for x in rows[0][1:5])
            assert lo <= min(o, c) <= max(o, c) <= h
            assert int(rows[0][6]) == int(rows[0][0]) + 59_999
        # the generic name pattern serves the same file
        generic = (
            f"{ex.base_url}/data/futures/um/daily/markPriceKlines/ETHUSDT/ETHUSDT-markPriceKlines-{day}.zip"
        )
        assert fetch_bytes(generic)[1] == fetch_bytes(ex.archive_url("markPriceKlines", "ETHUSDT", day))[1]


def test_monthly_archives(tmp_cfg) -> None:
    cfg = tmp_cfg(clock_start=datetime(2022, 9, 2, 1, 0, tzinfo=UTC), history_days=3, symbols=("BTCUSDT",))
    with ExchangeThread(cfg) as ex:
        _, monthly = checked(ex, "aggTrades", "BTCUSDT", "2022-08", "monthly")
        _, d30 = checked(ex, "aggTrades", "BTCUSDT", "2022-08-30")
        _, d31 = checked(ex, "aggTrades", "BTCUSDT", "2022-08-31")
        assert d30[0] == AGG_HEADER and monthly[0][0].isdigit()  # the month starts before 2022-08-11
        assert monthly == d30[1:] + d31[1:]
        _, funding = checked(ex, "fundingRate", "BTCUSDT", "2022-08", "monthly")
        rows = list(csv.reader(funding))
        # settlements at 08:00 and 16:00 on the 30th, 00:00 / 08:00 / 16:00 on the 31st
        assert len(rows) == 5 and all(r[1] == "8" for r in rows)
        assert int(rows[0][0]) == int(datetime(2022, 8, 30, 8, tzinfo=UTC).timestamp() * 1000)
        status, _ = fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2022-09", "monthly"))
        assert status == 404  # September has not ended


def test_archives_cached_on_disk_and_stable(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=1, symbols=("BTCUSDT",), clock_start=datetime(2024, 1, 2, 3, tzinfo=UTC))
    with ExchangeThread(cfg) as ex:
        url = ex.archive_url("aggTrades", "BTCUSDT", "2024-01-01")
        first = fetch_bytes(url)[1]
    cached = list((cfg.cache_dir / "archives").rglob("*.zip"))
    assert len(cached) == 1 and cached[0].read_bytes() == first
    with ExchangeThread(cfg) as ex:
        assert fetch_bytes(url.replace(url.split("/data")[0], ex.base_url))[1] == first
