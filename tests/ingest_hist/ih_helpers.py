"""Helpers of the historical aggTrades tests (a uniquely named module: no clash with other conftest.py)."""

from __future__ import annotations

from typing import Any

from microstructure.ingest.writer import Writer


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


async def run_collect(settings: Any, dsn: str, symbols: list[str], start: Any, end: Any, **kw: Any) -> Any:
    """collect_aggtrades_historical with a writer started and closed around it."""
    from microstructure.ingest.historical import collect_aggtrades_historical

    w = Writer(dsn, settings.home / "spill")
    await w.start()
    try:
        return await collect_aggtrades_historical(
            settings, dsn, symbols, start, end, progress=False, writer=w, **kw
        )
    finally:
        await w.close()


def count_archive_requests(ex: Any) -> list[str]:
    """Record every archive the exchange is asked for (zip or checksum), by path."""
    seen: list[str] = []
    original = ex.archive_bytes

    async def counting(ref: Any) -> Any:
        seen.append(ref.path)
        return await original(ref)

    ex.archive_bytes = counting
    return seen


def stored_rows(dsn: str, symbol: str) -> dict[str, list[Any]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT agg_id, (extract(epoch FROM ts) * 1000)::bigint, price, quantity, first_trade_id, "
            "last_trade_id, is_buyer_maker FROM agg_trades WHERE symbol = %s ORDER BY agg_id, ts",
            (symbol,),
        ).fetchall()
    names = ["agg_id", "ts_ms", "price", "quantity", "first_trade_id", "last_trade_id", "is_buyer_maker"]
    return {n: [r[i] for r in rows] for i, n in enumerate(names)}
