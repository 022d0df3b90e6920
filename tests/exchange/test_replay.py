"""Replay: recorded data.binance.vision archives served through REST, websocket and archives."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime

from exchange_helpers import fetch, fetch_bytes, run
from websockets.asyncio.client import connect

from microstructure.exchange import ExchangeConfig, ExchangeThread

DAY0 = int(datetime(2021, 5, 1, tzinfo=UTC).timestamp() * 1000)


def write_day(folder, day: str, first_id: int, t0: int, n: int, header: bool) -> list[str]:
    rows = []
    for i in range(n):
        price = f"{57000 + (i % 37) * 0.1:.1f}"  # Binance's files trim trailing zeros: "57000.0"
        rows.append(
            f"{first_id + i},{price},{0.001 * (1 + i % 5):.3f},{3 * (first_id + i)},{3 * (first_id + i) + 2},{t0 + i * 20_000 + 7},{'true' if i % 3 else 'false'}"
        )
    text = (
        (
            "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
            if header
            else ""
        )
        + "\n".join(rows)
        + "\n"
    )
    sub = folder / "data/futures/um/daily/aggTrades/BTCUSDT"
    sub.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(sub / f"BTCUSDT-aggTrades-{day}.zip", "w") as zf:
        zf.writestr(f"BTCUSDT-aggTrades-{day}.csv", text)
    return rows


def test_replayed_archives_feed_rest_websocket_and_archives(tmp_path) -> None:
    rec = tmp_path / "recorded"
    day1 = write_day(rec, "2021-05-01", 1000, DAY0, 4000, header=False)
    write_day(rec, "2021-05-02", 1000 + 4000, DAY0 + 86_400_000, 4320, header=False)
    cfg = ExchangeConfig(replay_dir=rec, cache_dir=tmp_path / "cache", symbols=("BTCUSDT",))
    with ExchangeThread(cfg) as ex:
        # the clock starts at the beginning of the last recorded day
        assert ex.now_ms() // 86_400_000 * 86_400_000 == DAY0 + 86_400_000
        # the original file is served as-is
        status, data = fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2021-05-01"))
        assert status == 200
        assert (
            data
            == (rec / "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2021-05-01.zip").read_bytes()
        )
        assert fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2021-05-02"))[0] == 404  # not ended
        # REST pages carry the recorded rows
        _, _, page = fetch(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=1000, limit=3)
        want = [r.split(",") for r in day1[:3]]
        assert [(r["a"], float(r["p"]), r["q"], r["f"], r["l"], r["T"], r["m"]) for r in page] == [
            (int(a), float(p), q, int(f), int(lt), int(T), m == "true") for a, p, q, f, lt, T, m in want
        ]
        assert page[0]["p"] == "57000.0"
        _, _, book = fetch(ex, "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
        assert float(book["bids"][0][0]) < float(book["asks"][0][0])

    # a clock just before a recorded trade: the websocket pushes it when its time comes
    t_next = DAY0 + 86_400_000 + 20_000 + 7
    cfg2 = ExchangeConfig(
        replay_dir=rec,
        cache_dir=tmp_path / "cache",
        clock_start=datetime.fromtimestamp((t_next - 300) / 1000, tz=UTC),
    )
    with ExchangeThread(cfg2) as ex:

        async def go() -> dict:
            async with connect(ex.ws_url + "/ws/btcusdt@aggTrade") as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 5))

        ev = run(go())
        assert ev["a"] == 5001 and ev["T"] == t_next and ev["E"] >= t_next


def write_zip(path, csv_name: str, text: str) -> bytes:
    """A small recorded archive (a fixed old timestamp inside, so a rebuilt zip could never match)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(csv_name, date_time=(2021, 5, 2, 3, 4, 6)), text)
    return path.read_bytes()


def test_recorded_archives_of_other_kinds_are_served_byte_for_byte(tmp_path) -> None:
    rec = tmp_path / "recorded"
    write_day(rec, "2021-05-01", 1000, DAY0, 500, header=False)
    write_day(rec, "2021-05-02", 1500, DAY0 + 86_400_000, 500, header=False)
    um = rec / "data/futures/um"
    depth_zip = write_zip(  # flat, next to nothing else: the name alone says what it is
        rec / "BTCUSDT-bookDepth-2021-05-01.zip",
        "BTCUSDT-bookDepth-2021-05-01.csv",
        "2021-05-01 00:00:07,-5,1234.5,78901234.5\n2021-05-01 00:00:07,5,1200.25,77000000.125\n",
    )
    # a recorded .CHECKSUM is served as it is (here without a final newline, unlike a computed one)
    depth_sum = f"{hashlib.sha256(depth_zip).hexdigest()}  BTCUSDT-bookDepth-2021-05-01.zip".encode()
    (rec / "BTCUSDT-bookDepth-2021-05-01.zip.CHECKSUM").write_bytes(depth_sum)
    metrics_zip = write_zip(
        um / "daily/metrics/BTCUSDT/BTCUSDT-metrics-2021-05-01.zip",
        "BTCUSDT-metrics-2021-05-01.csv",
        "2021-05-01 00:05:00,BTCUSDT,1.5,2.5,1.1,1.2,1.3,0.9\n",
    )
    mark_zip = write_zip(
        um / "daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2021-05-01.zip",
        "BTCUSDT-1m-2021-05-01.csv",
        "1619827200000,57000.1,57010.2,56990.3,57005.4,0,1619827259999,0,60,0,0,0\n",
    )
    funding_zip = write_zip(  # a month before the first recorded trades
        um / "monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2021-04.zip",
        "BTCUSDT-fundingRate-2021-04.csv",
        "1617235200000,8,0.00010000\n1617264000000,8,0.00012345\n",
    )
    write_zip(um / "daily/bookDepth/BTCUSDT/BTCUSDT-bookDepth-2021-05-02.zip", "x.csv", "today\n")
    cfg = ExchangeConfig(replay_dir=rec, cache_dir=tmp_path / "cache", symbols=("BTCUSDT",))
    with ExchangeThread(cfg) as ex:

        def get(kind: str, day: str, period: str = "daily") -> tuple[int, bytes, bytes]:
            url = ex.archive_url(kind, "BTCUSDT", day, period)
            status, data = fetch_bytes(url)
            return status, data, fetch_bytes(url + ".CHECKSUM")[1]

        status, data, checksum = get("bookDepth", "2021-05-01")
        assert status == 200 and data == depth_zip and checksum == depth_sum
        for kind, day, period, want in (
            ("metrics", "2021-05-01", "daily", metrics_zip),
            ("markPriceKlines", "2021-05-01", "daily", mark_zip),
            ("fundingRate", "2021-04", "monthly", funding_zip),
        ):
            status, data, checksum = get(kind, day, period)
            assert status == 200 and data == want, kind
            name = ex.archive_url(kind, "BTCUSDT", day, period).rsplit("/", 1)[1]
            assert checksum == f"{hashlib.sha256(want).hexdigest()}  {name}\n".encode()  # no sibling
        assert ex.archive_url("markPriceKlines", "BTCUSDT", "2021-05-01").endswith(
            "/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2021-05-01.zip"
        )
        # the same file name of another kline kind is not the recorded mark file: built from the trades
        status, data, _ = get("indexPriceKlines", "2021-05-01")
        assert status == 200 and data != mark_zip
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.read(zf.namelist()[0]).decode().count("\n") > 100
        # a recorded day that has not ended on the exchange clock is not out yet
        assert get("bookDepth", "2021-05-02")[0] == 404


def test_headered_recorded_aggtrades(tmp_path) -> None:
    """Binance's files carry a header line from 2022-08-11 on: a folder mixing both reads as one."""
    rec = tmp_path / "recorded"
    d0 = int(datetime(2022, 8, 10, tzinfo=UTC).timestamp() * 1000)
    rows = write_day(rec, "2022-08-10", 7000, d0, 300, header=False)
    rows += write_day(rec, "2022-08-11", 7300, d0 + 86_400_000, 300, header=True)
    write_day(rec, "2022-08-12", 7600, d0 + 2 * 86_400_000, 300, header=True)
    cfg = ExchangeConfig(replay_dir=rec, cache_dir=tmp_path / "cache", symbols=("BTCUSDT",))
    with ExchangeThread(cfg) as ex:
        assert ex.now_ms() // 86_400_000 * 86_400_000 == d0 + 2 * 86_400_000
        status, data = fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2022-08-11"))
        path = rec / "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-08-11.zip"
        assert status == 200 and data == path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.read(zf.namelist()[0]).startswith(b"agg_trade_id,price,")
        # REST pages by fromId run over both days: every recorded row, the header never one of them
        _, _, page = fetch(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=7000, limit=1000)
        got = [(r["a"], r["p"], r["q"], r["f"], r["l"], r["T"], r["m"]) for r in page][:600]
        want = [
            (int(a), p, q, int(f), int(lt), int(T), m == "true")
            for a, p, q, f, lt, T, m in (r.split(",") for r in rows)
        ]
        assert got == want
        # a time window inside the headered day
        t1 = d0 + 86_400_000
        _, _, page = fetch(ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=t1, endTime=t1 + 3_599_999)
        assert [r["a"] for r in page] == [
            int(r.split(",")[0]) for r in rows[300:] if int(r.split(",")[5]) < t1 + 3_600_000
        ]
