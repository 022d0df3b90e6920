"""The health endpoint of `collect all`: real HTTP against a live run on the local exchange."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from pglite_server import free_port

from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig, LocalExchange
from microstructure.ingest.collectors.all import collect_all
from microstructure.ingest.collectors.health_http import HealthServer
from microstructure.ingest.health import Health, now_ms


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


async def get_health(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as r:
        return r.status, await r.json()


def test_a_frozen_database_makes_health_503_with_the_reason(db_url: str, tmp_path: Path) -> None:
    """Data keeps arriving while the database answers nothing: /health says so (it said 200 "ok"
    throughout while rows_committed stood still), and recovers once the database answers."""
    from tcp_proxy import TcpProxy

    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), seed=3, history_days=0, live_rate=50.0, cache_dir=tmp_path / "c"
    )
    port = free_port()

    async def go(proxy: TcpProxy) -> tuple[tuple[int, dict], tuple[int, dict], tuple[int, dict]]:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            stop = asyncio.Event()
            task = asyncio.create_task(
                collect_all(
                    settings, proxy.dsn, ["BTCUSDT"], stop_event=stop, handle_signals=False,
                    health_port=port, health_commit_after=3, features_interval=None,
                )
            )  # fmt: skip
            await asyncio.sleep(3)
            before = await get_health(port)
            proxy.set("frozen")
            await asyncio.sleep(6)
            frozen = await get_health(port)
            proxy.set("up")
            after = frozen
            for _ in range(60):
                await asyncio.sleep(0.5)
                after = await get_health(port)
                if after[0] == 200:
                    break
            stop.set()
            await task
            return before, frozen, after

    with TcpProxy(db_url) as proxy:
        before, frozen, after = asyncio.run(go(proxy))
    assert before[0] == 200, before[1]["problems"]
    assert frozen[0] == 503 and frozen[1]["status"] == "degraded"
    assert any("no batch committed for" in p for p in frozen[1]["problems"]), frozen[1]["problems"]
    assert frozen[1]["writer"]["seconds_since_last_commit"] >= 3
    assert after[0] == 200, after[1]["problems"]


def test_a_nearly_full_spill_folder_makes_health_503(tmp_path: Path) -> None:
    from test_writer_outage import trades

    from microstructure.ingest.sink.writer import Writer

    async def go() -> tuple[int, dict, str]:
        w = Writer("postgresql://postgres:postgres@127.0.0.1:1/none", tmp_path / "spill",
                   max_spill_bytes=200_000, spill_after=0.2, max_backoff=0.1)  # fmt: skip
        await w.start()
        server = HealthServer(Health(), writer=w)
        port = await server.start(0)
        try:
            for k in range(30):
                w.submit_nowait("agg_trades", "BTCUSDT", trades(k * 300, 300))
                await asyncio.sleep(0.05)
            status, body = await get_health(port)
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
                metrics = await r.text()
        finally:
            await server.stop()
            await w.close(0.1)
        return status, body, metrics

    status, body, metrics = asyncio.run(go())
    assert status == 503
    assert any("spill" in p and ("full" in p or "limit" in p) for p in body["problems"]), body["problems"]
    assert "microstructure_writer_spill_bytes" in metrics


def test_metrics_report_features_lag_and_export_lag(db_url: str, tmp_path: Path) -> None:
    """/metrics says how far behind the newest materialised bar and the newest exported hour are."""
    import sys
    from datetime import UTC, datetime

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "features"))
    from fx_cases import MIDNIGHT, write_cases

    from microstructure.export.exporter import export_once
    from microstructure.features_sql.refresher import refresh_once

    asyncio.run(write_cases(db_url))  # rows of 2026-03-01/02, exported before the live run
    asyncio.run(refresh_once(db_url))
    export_once(db_url, tmp_path / "data", types=["aggtrades"])
    exported_to = datetime.fromtimestamp(MIDNIGHT / 1000, UTC).replace(minute=0).timestamp() + 3600
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), seed=3, history_days=0, live_rate=50.0, cache_dir=tmp_path / "c"
    )
    port = free_port()

    async def go() -> str:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            stop = asyncio.Event()
            task = asyncio.create_task(
                collect_all(
                    settings,
                    db_url,
                    ["BTCUSDT"],
                    stop_event=stop,
                    handle_signals=False,
                    health_port=port,
                    features_interval=1.0,
                )
            )
            metrics = ""
            async with aiohttp.ClientSession() as http:
                for _ in range(40):  # until the first live bar is materialised and the probe has run
                    await asyncio.sleep(0.5)
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                        metrics = await r.text()
                    lag = [
                        ln
                        for ln in metrics.splitlines()
                        if ln.startswith("microstructure_features_lag_seconds ")
                    ]
                    if lag and float(lag[0].split()[1]) < 120:
                        break
            stop.set()
            await task
            return metrics

    metrics = asyncio.run(go())
    values = {
        ln.split()[0]: float(ln.split()[1])
        for ln in metrics.splitlines()
        if ln.startswith("microstructure_") and " " in ln
    }
    assert values["microstructure_features_lag_seconds"] < 120  # live bars of this minute
    assert abs(values["microstructure_export_lag_seconds"] - (now_ms() / 1000 - exported_to)) < 60
