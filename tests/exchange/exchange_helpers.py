"""Helpers for the local-exchange tests (a uniquely named module: tests/conftest.py is another one)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from microstructure.exchange import ExchangeConfig, LocalExchange


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion in a fresh event loop (tests are synchronous)."""
    return asyncio.run(coro)


async def get_json(url: str, **params: object) -> tuple[int, dict[str, str], object]:
    async with aiohttp.ClientSession() as s, s.get(url, params={k: str(v) for k, v in params.items()}) as r:
        text = await r.text()
        return r.status, dict(r.headers), json.loads(text) if text and text[0] in "[{" else text


def fetch(ex: LocalExchange, path: str, **params: object) -> tuple[int, dict[str, str], object]:
    return run(get_json(ex.base_url + path, **params))


def fetch_bytes(url: str) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.read()

    return run(go())


# a fixed exchange time, 5 s into a minute, so per-minute weight windows do not roll over mid-test
FIXED_START = datetime(2024, 3, 6, 12, 0, 5, tzinfo=UTC)


def make_config(tmp: Path, **kw: object) -> ExchangeConfig:
    base: dict[str, object] = {
        "symbols": ("BTCUSDT", "ETHUSDT"),
        "seed": 7,
        "history_days": 2,
        "trades_per_day": 20_000,
        "cache_dir": tmp / "cache",
    }
    base.update(kw)
    return ExchangeConfig(**base)  # type: ignore[arg-type]
