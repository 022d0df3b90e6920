"""The health endpoint of `collect all`: real HTTP against a live run on the local exchange."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp

from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig, LocalExchange
from microstructure.ingest.collectors.all import collect_all
from microstructure.ingest.collectors.health_http import HealthServer
from microstructure.ingest.health import Health, now_ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_collect_all_serves_health_and_metrics(db_url: str, tmp_path: Path) -> None:
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), seed=3, history_days=0, live_rate=50.0, cache_dir=tmp_path / "c"
    )
    port = free_port()

    async def go() -> tuple[int, dict, str, object]:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            stop = asyncio.Event()
            task = asyncio.create_task(
                collect_all(
                    settings, db_url, ["BTCUSDT"], stop_event=stop, handle_signals=False, health_port=port
                )
            )
            await asyncio.sleep(3)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/health") as r:
                    status, body = r.status, await r.json()
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
            stop.set()
            return status, body, metrics, await task

    status, body, metrics, report = asyncio.run(go())
    assert status == 200 and body["status"] == "ok" and body["problems"] == []
    agg = next(v for k, v in body["streams"].items() if k.startswith("aggTrade"))
    assert agg["messages"] > 10 and agg["seconds_since_last_message"] < 5
    assert body["streams"]["book_depth20"]["messages"] >= 2
    assert body["writer"]["rows_inserted"] > 0 and body["writer"]["spill_files"] == 0
    assert "microstructure_up 1" in metrics
    assert 'microstructure_stream_messages_total{stream="book_depth20"}' in metrics
    assert "microstructure_writer_rows_inserted_total" in metrics
    assert report.ok and report.health_url == f"http://127.0.0.1:{port}/health"  # type: ignore[attr-defined]


def test_a_silent_stream_makes_health_503() -> None:
    health = Health()
    health.stream("aggTrade[0]#1").messages = 5
    health.stream("aggTrade[0]#1").last_recv_ms = now_ms() - 120_000

    async def go() -> tuple[int, dict, str]:
        server = HealthServer(health, stale_after=60)
        port = await server.start(0)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/health") as r:
                    status, body = r.status, await r.json()
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
        finally:
            await server.stop()
        return status, body, metrics

    status, body, metrics = asyncio.run(go())
    assert status == 503 and body["status"] == "degraded"
    assert body["problems"] == ["aggTrade[0]#1: no message for 120 s"]
    assert "microstructure_up 0" in metrics
