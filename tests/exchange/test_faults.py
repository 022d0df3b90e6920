"""Every fault knob, observed from the client side."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import time
import zipfile
from datetime import UTC, datetime

import aiohttp
import websockets
from exchange_helpers import fetch, fetch_bytes, run
from websockets.asyncio.client import connect

from microstructure.exchange import ExchangeThread, FaultConfig

STREAM = "/ws/btcusdt@aggTrade"


async def read_until_closed(url: str, limit: float = 10.0) -> tuple[list[str], str]:
    got: list[str] = []
    deadline = time.monotonic() + limit
    async with connect(url) as ws:
        try:
            while time.monotonic() < deadline:
                got.append(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        except websockets.ConnectionClosed as exc:
            return got, type(exc).__name__
        except TimeoutError:
            return got, "open"
    return got, "open"


def test_close_after_n_messages(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, live_rate=300.0, faults=FaultConfig(ws_close_after=25))
    with ExchangeThread(cfg) as ex:
        got, how = run(read_until_closed(ex.ws_url + STREAM))
    assert len(got) == 25 and how == "ConnectionClosedError"  # dropped, no close frame


def test_close_at_random_times(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, live_rate=100.0, faults=FaultConfig(ws_close_random=0.3))
    with ExchangeThread(cfg) as ex:

        async def three() -> list[tuple[list[str], str]]:
            return await asyncio.gather(*(read_until_closed(ex.ws_url + STREAM, 8.0) for _ in range(3)))

        results = run(three())
    assert all(how == "ConnectionClosedError" for _, how in results)
    assert len({len(got) for got, _ in results}) > 1  # each connection dies at its own time


def test_skipped_agg_trades_leave_id_gaps(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, live_rate=300.0, faults=FaultConfig(ws_skip_agg_trades=0.2))
    with ExchangeThread(cfg) as ex:

        async def go() -> list[int]:
            async with connect(ex.ws_url + STREAM) as ws:
                return [json.loads(await asyncio.wait_for(ws.recv(), 5))["a"] for _ in range(200)]

        ids = run(go())
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(ids))
    assert all(b > a for a, b in itertools.pairwise(ids))
    assert 15 <= gaps <= 120  # ~20 % of ~250 ids


def test_broken_diff_depth_sequence(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, faults=FaultConfig(ws_break_depth=0.3))
    with ExchangeThread(cfg) as ex:

        async def go() -> list[dict]:
            async with connect(ex.ws_url + "/ws/btcusdt@depth@100ms") as ws:
                return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(25)]

        events = run(go())
    breaks = sum(b["pu"] != a["u"] for a, b in itertools.pairwise(events))
    assert breaks >= 2


def test_malformed_messages(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, live_rate=300.0, faults=FaultConfig(ws_malformed=0.1))
    with ExchangeThread(cfg) as ex:

        async def go() -> list[str]:
            async with connect(ex.ws_url + STREAM) as ws:
                return [await asyncio.wait_for(ws.recv(), 5) for _ in range(150)]

        msgs = run(go())
    bad = 0
    for m in msgs:
        try:
            json.loads(m)
        except ValueError:
            bad += 1
    assert 3 <= bad <= 40


def test_429_storm_and_slow_responses(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, faults=FaultConfig(rest_429_rate=0.5, rest_delay=0.2))
    with ExchangeThread(cfg) as ex:
        statuses = []
        t0 = time.monotonic()
        for _ in range(12):
            status, headers, body = fetch(ex, "/fapi/v1/time")
            statuses.append(status)
            if status == 429:
                assert body["code"] == -1003 and headers["Retry-After"] == "1"
        elapsed = time.monotonic() - t0
    assert 2 <= statuses.count(429) <= 10 and statuses.count(200) >= 2
    assert 418 not in statuses  # a storm is the server's doing: no ban
    assert elapsed >= 12 * 0.2


def test_missing_day_bad_checksum_monthly_disorder(tmp_cfg) -> None:
    faults = FaultConfig(
        missing_archive_days=("2022-08-30",), bad_checksum_days=("2022-08-31",), monthly_disorder=True
    )
    cfg = tmp_cfg(
        clock_start=datetime(2022, 9, 2, 1, tzinfo=UTC), history_days=3, symbols=("BTCUSDT",), faults=faults
    )
    with ExchangeThread(cfg) as ex:
        assert fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2022-08-30"))[0] == 404
        assert fetch_bytes(ex.archive_url("metrics", "BTCUSDT", "2022-08-30"))[0] == 404
        url = ex.archive_url("aggTrades", "BTCUSDT", "2022-08-31")
        status, data = fetch_bytes(url)
        assert status == 200
        digest = fetch_bytes(url + ".CHECKSUM")[1].decode().split()[0]
        assert digest != hashlib.sha256(data).hexdigest()
        good = ex.archive_url("aggTrades", "BTCUSDT", "2022-09-01")
        assert (
            fetch_bytes(good + ".CHECKSUM")[1].decode().split()[0]
            == hashlib.sha256(fetch_bytes(good)[1]).hexdigest()
        )
        status, data = fetch_bytes(ex.archive_url("aggTrades", "BTCUSDT", "2022-08", "monthly"))
        assert status == 200
    zf = zipfile.ZipFile(io.BytesIO(data))
    rows = list(csv.reader(zf.read(zf.namelist()[0]).decode().splitlines()))
    ids = [int(r[0]) for r in rows]
    assert len(ids) > len(set(ids))  # duplicates
    assert ids != sorted(ids)  # out of order
    assert sorted(set(ids)) == list(range(min(ids), max(ids) + 1))  # but nothing lost


def test_aiohttp_client_sees_same_faults(tmp_cfg) -> None:
    """A second client library observes the close-after-N drop the same way."""
    cfg = tmp_cfg(history_days=0, live_rate=300.0, faults=FaultConfig(ws_close_after=10))
    with ExchangeThread(cfg) as ex:

        async def go() -> int:
            n = 0
            async with aiohttp.ClientSession() as s, s.ws_connect(ex.ws_url + STREAM) as ws:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        n += 1
            return n

        assert run(go()) == 10


def test_stalled_websocket_stays_open_answers_pings_and_sends_nothing(tmp_cfg) -> None:
    cfg = tmp_cfg(
        history_days=0,
        live_rate=300.0,
        ping_interval=0.3,
        pong_timeout=0.5,
        faults=FaultConfig(ws_stall_after=20),
    )
    with ExchangeThread(cfg) as ex:

        async def go() -> tuple[int, float, bool]:
            async with connect(ex.ws_url + STREAM) as ws:
                got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(20)]
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(ws.recv(), 2.0)  # server pings come and go meanwhile
                    silent = 0.0
                except TimeoutError:
                    silent = time.monotonic() - t0
                pong = await ws.ping()
                await asyncio.wait_for(pong, 2)  # the server still answers our pings
                return len(got), silent, ws.state.name == "OPEN"

        n, silent, still_open = run(go())
    assert n == 20 and silent >= 1.9 and still_open


def test_websocket_stall_for_some_seconds_then_data_again(tmp_cfg) -> None:
    cfg = tmp_cfg(history_days=0, live_rate=300.0, faults=FaultConfig(ws_stall_after=10, ws_stall_for=1.0))
    with ExchangeThread(cfg) as ex:

        async def go() -> list[tuple[float, dict]]:
            out = []
            async with aiohttp.ClientSession() as s, s.ws_connect(ex.ws_url + STREAM) as ws:
                while len(out) < 30:
                    msg = await asyncio.wait_for(ws.receive(), 5)
                    out.append((time.monotonic(), json.loads(msg.data)))
            return out

        got = run(go())
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(got)]
    assert max(gaps) >= 0.8 and gaps.index(max(gaps)) == 9  # silent after the 10th message, then on
    ids = [d["a"] for _, d in got]
    assert ids[10] - ids[9] > 1  # what the stall would have sent is lost, as from a stalled server


def test_malformed_rest_answers_on_chosen_paths(tmp_cfg) -> None:
    faults = FaultConfig(rest_malformed=1.0, rest_malformed_paths=("/fapi/v1/openInterest",))
    cfg = tmp_cfg(history_days=0, faults=faults)
    with ExchangeThread(cfg) as ex:

        async def go() -> tuple[list[tuple[int, str]], int, str]:
            async with aiohttp.ClientSession() as s:
                bodies = []
                for _ in range(16):
                    async with s.get(
                        ex.base_url + "/fapi/v1/openInterest", params={"symbol": "BTCUSDT"}
                    ) as r:
                        bodies.append((r.status, await r.text()))
                async with s.get(ex.base_url + "/fapi/v1/time") as r:
                    time_status, time_text = r.status, await r.text()
                return bodies, time_status, time_text

        bodies, time_status, time_text = run(go())
    assert all(status == 200 for status, _ in bodies)
    kinds = set()
    for _, text in bodies:
        try:
            obj = json.loads(text)
        except ValueError:
            kinds.add("truncated")
            assert text.startswith('{"')
            continue
        assert obj == {}  # valid JSON without the fields
        kinds.add("empty")
    assert kinds == {"truncated", "empty"}
    assert time_status == 200 and "serverTime" in json.loads(time_text)  # other paths are untouched
