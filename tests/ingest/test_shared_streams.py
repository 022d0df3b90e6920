"""SharedStreams against the local exchange over real websockets: streams split over connections of
at most `per_connection`, and rotation with overlap that hands every message on exactly once."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from microstructure.exchange import ExchangeConfig, LocalExchange
from microstructure.ingest.binance.streams import SharedStreams, message_key
from microstructure.ingest.health import Health

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def config(tmp_path: Path) -> ExchangeConfig:
    return ExchangeConfig(
        symbols=SYMBOLS,
        seed=3,
        history_days=0,
        trades_per_day=20_000,
        live_rate=40.0,
        cache_dir=tmp_path / "c",
    )


async def run_streams(ex: LocalExchange, seconds: float, **kw: Any) -> tuple[SharedStreams, dict[str, list]]:
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    health = Health()
    shared = SharedStreams(ex.ws_url, expected=2, health=health, events=None, **kw)
    trades = [f"{s.lower()}@aggTrade" for s in SYMBOLS]
    others = [f"{s.lower()}@markPrice@1s" for s in SYMBOLS] + [f"{s.lower()}@depth20@500ms" for s in SYMBOLS]
    shared.register(trades, lambda stream, data, recv: got[stream].append(data), "trades")
    shared.register(others, lambda stream, data, recv: got[stream].append(data), "others")
    stop = asyncio.Event()
    task = asyncio.create_task(shared.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return shared, got


def test_streams_are_split_over_connections_of_at_most_per_connection(tmp_path: Path) -> None:
    async def go():
        async with LocalExchange(config(tmp_path)) as ex:
            return await run_streams(ex, 3.0, per_connection=4)

    shared, got = asyncio.run(go())
    assert shared.connections == ["streams[0]#1", "streams[1]#2", "streams[2]#3"]  # 9 streams, 4 a connection
    assert len(got) == 9  # every stream delivered, whichever connection carried it
    assert all(shared.health.stream(c).messages > 0 for c in shared.connections)
    assert shared.health.stream("trades").messages == sum(len(got[f"{s.lower()}@aggTrade"]) for s in SYMBOLS)


def test_rotation_overlaps_and_hands_each_message_on_once(tmp_path: Path) -> None:
    async def go():
        async with LocalExchange(config(tmp_path)) as ex:
            shared, got = await run_streams(ex, 7.0, rotate_after=1.5)
            return shared, got

    shared, got = asyncio.run(go())
    assert shared.rotations >= 3
    assert len(shared.connections) == shared.rotations + 1
    for stream, msgs in got.items():
        keys = [message_key(stream, m) for m in msgs]
        assert len(keys) == len(set(keys)), f"{stream}: a message handed on twice"
        if stream.endswith("@aggTrade"):
            ids = [m["a"] for m in msgs]
            assert ids == list(range(ids[0], ids[0] + len(ids))), f"{stream}: ids lost or reordered"
        elif stream.endswith("@markPrice@1s"):
            times = [m["E"] for m in msgs]
            # one a second, none lost across rotations
            assert all(0 < b - a < 1500 for a, b in itertools.pairwise(times)), times
            assert len(times) >= 6
        else:
            updates = [m["u"] for m in msgs]
            assert updates == sorted(updates) and len(updates) >= 12
            times = [m["E"] for m in msgs]
            assert all(0 < b - a < 750 for a, b in itertools.pairwise(times)), times


def test_a_handler_bug_ends_the_run_at_once_instead_of_leaving_the_streams_unread(tmp_path: Path) -> None:
    """Malformed messages (ValueError, KeyError, ...) are counted; any other error is a bug and
    surfaces from run() instead of silently ending the connection until the next rotation."""

    def handler(stream: str, data: dict, recv_ms: int) -> None:
        raise RuntimeError("bug in a collector")

    async def go() -> float:
        async with LocalExchange(config(tmp_path)) as ex:
            shared = SharedStreams(ex.ws_url, expected=1, health=Health(), events=None)
            shared.register(["btcusdt@markPrice@1s"], handler, "bug")
            stop = asyncio.Event()
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(RuntimeError, match="bug in a collector"):
                await asyncio.wait_for(shared.run(stop), 10)
            return asyncio.get_running_loop().time() - t0

    assert asyncio.run(go()) < 5


def test_a_connection_carries_up_to_1024_streams_the_rest_subscribed_paced(tmp_path: Path) -> None:
    """600 streams of a 300-symbol market on ONE connection: the first named in the URL (a request
    line has a size limit), the rest SUBSCRIBEd a few a second (the exchange drops a client sending
    more than 10 messages a second); every stream delivers."""
    from microstructure.exchange.config import universe_symbols
    from microstructure.ingest.binance.streams import URL_MAX_CHARS, split_streams

    symbols = universe_symbols(300)
    names = [f"{s.lower()}@markPrice@1s" for s in symbols] + [f"{s.lower()}@depth20@500ms" for s in symbols]
    head, chunks = split_streams(names)
    assert len("/".join(head)) <= URL_MAX_CHARS and chunks and head + [n for c in chunks for n in c] == names
    got: dict[str, int] = defaultdict(int)

    async def go() -> SharedStreams:
        cfg = ExchangeConfig(symbols=("BTCUSDT",), universe=300, universe_rate=300.0, history_days=0,
                             live_rate=5.0, cache_dir=tmp_path / "c")  # fmt: skip
        async with LocalExchange(cfg) as ex:
            shared = SharedStreams(ex.ws_url, expected=1, health=Health(), events=None)
            shared.register(names, lambda stream, data, recv: got.__setitem__(stream, got[stream] + 1), "all")
            stop = asyncio.Event()
            task = asyncio.create_task(shared.run(stop))
            for _ in range(100):
                await asyncio.sleep(0.1)
                if len(got) == len(names):
                    break
            stop.set()
            await task
            return shared

    shared = asyncio.run(go())
    assert shared.connections == ["streams[0]#1"]  # one connection, never dropped for its messages
    assert shared.health.stream("streams[0]#1").reconnects == 0
    assert set(got) == set(names)


def test_connection_attempts_wait_for_the_per_ip_budget() -> None:
    from microstructure.ingest.binance.streams import ConnectionBudget

    async def go() -> list[float]:
        budget = ConnectionBudget(limit=3, window=0.6)
        stop = asyncio.Event()
        t0 = asyncio.get_running_loop().time()
        out = []
        for _ in range(5):
            assert await budget.take(stop)
            out.append(asyncio.get_running_loop().time() - t0)
        return out

    times = asyncio.run(go())
    assert times[2] < 0.1 and times[3] >= 0.55 and times[4] >= 0.55  # the 4th waits for the 1st to age out
