"""Fixtures for the local-exchange tests: exchanges running on a background thread, real clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange_helpers import FIXED_START, make_config

from microstructure.exchange import ExchangeConfig, ExchangeThread, LocalExchange


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExchange]:
    """One shared exchange: BTCUSDT and ETHUSDT, 2 history days, a live rate high enough to stream."""
    cfg = make_config(tmp_path_factory.mktemp("ex"), live_rate=100.0, clock_start=FIXED_START)
    with ExchangeThread(cfg) as ex:
        yield ex


@pytest.fixture
def tmp_cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(**kw: object) -> ExchangeConfig:
        return make_config(tmp_path, **kw)

    return make
