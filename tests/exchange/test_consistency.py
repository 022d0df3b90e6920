"""Archive rows, REST pages and websocket messages of the same period carry the same ids and values."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile

import aiohttp
from exchange_helpers import fetch_bytes, run
from websockets.asyncio.client import connect

from microstructure.exchange import ExchangeThread
from microstructure.exchange.archives import day_ms

KEYS = ("a", "p", "q", "f", "l", "T", "m")


def archive_rows(ex, day) -> list[tuple]:
    status, data = fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", day))
    assert status == 200
    zf = zipfile.ZipFile(io.BytesIO(data))
    lines = zf.read(zf.namelist()[0]).decode().splitlines()
    if not lines[0][0].isdigit():
        lines = lines[1:]
    return [
        (int(a), p, q, int(f), int(lt), int(T), m == "true") for a, p, q, f, lt, T, m in csv.reader(lines)
    ]


def test_archive_rest_and_websocket_form_one_sequence(tmp_cfg) -> None:
    cfg = tmp_cfg(
        history_days=1, trades_per_day=4_000, live_rate=150.0, weight_limit=100_000, symbols=("BTCUSDT",)
    )
    with ExchangeThread(cfg) as ex:
        (day,) = ex.history_dates()
        archived = archive_rows(ex, day)
        w_start = day_ms(day) + 5 * 3_600_000 + 12_345
        w_end = w_start + 3_599_999  # endTime is inclusive

        async def go() -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
            async with aiohttp.ClientSession() as s:

                async def page(**params: object) -> list[tuple]:
                    q = {"symbol": "BTCUSDT", **{k: str(v) for k, v in params.items()}}
                    async with s.get(ex.base_url + "/fapi/v1/aggTrades", params=q) as r:
                        assert r.status == 200
                        return [tuple(row[k] for k in KEYS) for row in await r.json()]

                # REST by fromId over the archived day, then beyond it into today
                rest: list[tuple] = []
                next_id = archived[0][0]
                while next_id <= archived[-1][0]:
                    got = await page(fromId=next_id, limit=1000)
                    rest += got
                    next_id = got[-1][0] + 1
                after = await page(fromId=archived[-1][0] + 1, limit=5)
                # REST by time window (just under an hour, not aligned to the hour) inside the day
                by_time = await page(startTime=w_start, endTime=w_end, limit=1000)
                # websocket messages, then the same ids through REST
                async with connect(ex.ws_url + "/ws/btcusdt@aggTrade") as ws:
                    msgs = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(40)]
                live = [tuple(m[k] for k in KEYS) for m in msgs]
                again = await page(fromId=live[0][0], limit=40)
                return rest, after, by_time, live + again

        rest, after, by_time, live_and_again = run(go())
        assert rest[: len(archived)] == archived
        assert after[0][0] == archived[-1][0] + 1 and after[0][3] == archived[-1][4] + 1
        assert after[0][5] >= archived[-1][5]
        # the window's rows, taken from the archive by the requested bounds alone
        in_window = [r for r in archived if w_start <= r[5] <= w_end]
        assert 50 < len(in_window) < 1000
        assert by_time == in_window
        live, again = live_and_again[:40], live_and_again[40:]
        assert live == again
        assert [r[0] for r in live] == list(range(live[0][0], live[0][0] + 40))


def test_crossing_midnight_keeps_one_sequence(tmp_cfg) -> None:
    from datetime import UTC, datetime

    cfg = tmp_cfg(
        history_days=1,
        live_rate=200.0,
        symbols=("BTCUSDT",),
        clock_start=datetime(2024, 3, 6, 23, 59, 58, 500000, tzinfo=UTC),
    )
    midnight = int(datetime(2024, 3, 7, tzinfo=UTC).timestamp() * 1000)
    with ExchangeThread(cfg) as ex:
        assert fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2024-03-06"))[0] == 404  # not ended yet

        async def go() -> list[dict]:
            out = []
            async with connect(ex.ws_url + "/ws/btcusdt@aggTrade") as ws:
                while not out or out[-1]["T"] < midnight + 300:
                    out.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            return out

        msgs = run(go())
        assert msgs[0]["T"] < midnight <= msgs[-1]["T"]
        assert [m["a"] for m in msgs] == list(range(msgs[0]["a"], msgs[0]["a"] + len(msgs)))
        # the day that just ended is now an archive, and it ends right before the first new-day trade
        rows = archive_rows(ex, "2024-03-06")
        first_new = next(m for m in msgs if m["T"] >= midnight)
        assert rows[-1][0] + 1 == first_new["a"] and rows[-1][4] + 1 == first_new["f"]
        # the websocket messages of the day's last moments are that archive's last rows, value for value
        before = [tuple(m[k] for k in KEYS) for m in msgs if m["T"] < midnight]
        assert len(before) > 50
        assert rows[-len(before) :] == before
