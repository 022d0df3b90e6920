"""Helpers for the book / market-data tests (a uniquely named module)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig
from microstructure.ingest.writer import Writer

# 5 s into a minute, away from funding boundaries unless a test wants one
FIXED_START = datetime(2024, 3, 6, 12, 0, 5, tzinfo=UTC)


async def make_writer(dsn: str, spill: Path) -> Any:
    w = Writer(dsn, spill)
    await w.start()
    return w


def exchange_config(cache: Path, **kw: Any) -> ExchangeConfig:
    base: dict[str, Any] = {
        "symbols": ("BTCUSDT", "ETHUSDT"),
        "seed": 11,
        "history_days": 0,
        "trades_per_day": 20_000,
        "live_rate": 20.0,
        "clock_start": FIXED_START,
        "cache_dir": cache,
    }
    base.update(kw)
    return ExchangeConfig(**base)


def settings_for(ex: Any, db_url: str, home: Path) -> Settings:
    s = Settings(database_url=db_url, home=home)
    s.point_at_exchange(ex.base_url)
    return s


class Tap:
    """An independent client recording what the exchange sends on some streams (the test's oracle)."""

    def __init__(self, ws_url: str, streams: list[str]) -> None:
        self.url = ws_url + "/stream?streams=" + "/".join(streams)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.malformed = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url) as ws:
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.2)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    obj = json.loads(msg.data)
                except ValueError:
                    self.malformed += 1
                    continue
                self.messages.append((obj["stream"], obj["data"]))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


async def fetch_all(dsn: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def wall() -> float:
    return time.monotonic()
