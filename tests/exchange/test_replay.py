"""Replay: recorded data.binance.vision archives served through REST, websocket and archives."""

from __future__ import annotations

import asyncio
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
