"""Fixtures for the historical aggTrades tests: the local exchange config, settings, the writer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def writer_module() -> Any:
    """The real writer once it exists, else the stand-in of this folder."""
    import importlib.util

    if importlib.util.find_spec("microstructure.ingest.writer") is not None:
        return importlib.import_module("microstructure.ingest.writer")
    return importlib.import_module("standin_writer")


@pytest.fixture(scope="session")
def exchange_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exchange-cache")


def generator_trades(ex: Any, symbol: str, t0_ms: int, t1_ms: int) -> dict[str, list[Any]]:
    """The local exchange's own aggregate trades with t0 <= T < t1, as AGG_TRADES-named columns."""
    market = ex.markets[symbol]
    tr = market.trades_between(t0_ms, t1_ms)
    spec = market.spec
    return {
        "agg_id": tr.a.tolist(),
        "ts_ms": tr.T.tolist(),
        "price": (tr.price / 10**spec.price_decimals).tolist(),
        "quantity": (tr.qty / 10**spec.qty_decimals).tolist(),
        "first_trade_id": tr.first.tolist(),
        "last_trade_id": tr.last.tolist(),
        "is_buyer_maker": tr.maker.astype(bool).tolist(),
    }
