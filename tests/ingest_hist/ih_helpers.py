"""Helpers of the historical aggTrades tests (a uniquely named module: no clash with other conftest.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from aiohttp import web

from microstructure.ingest.records import AGG_TRADES
from microstructure.ingest.sink.writer import Writer


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
    from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

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


class Answers:
    """What the exchange itself received and answered, recorded on its side (not the client's view).

    requests   (path, query string) of every HTTP request, websocket handshakes included, on arrival
    answers    (path, status, Retry-After header or None, exchange ms) of every answer
    verdicts   statuses its rate limiter gave (200, 429 or 418): a 429 here is a real weight overrun,
               not an injected one (injected 429s return before the limiter is consulted)
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.answers: list[tuple[str, int, str | None, int]] = []
        self.verdicts: Counter[int] = Counter()

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status, _, _ in self.answers)

    def retry_after_total(self, status: int = 429) -> float:
        return sum(float(ra) for _, st, ra, _ in self.answers if st == status and ra is not None)


def record_answers(ex: Any, on_request: Callable[[web.Request], None] | None = None) -> Answers:
    """Record what `ex` (a LocalExchange not started yet) answers: an outermost middleware and a
    wrapper of its rate limiter. `on_request(request)` runs on each request before the exchange sees it."""
    rec = Answers()
    make_app = ex.make_app
    limiter_check = ex.limiter.check

    def check(client: str, weight: int, now_ms: int) -> Any:
        verdict = limiter_check(client, weight, now_ms)
        rec.verdicts[verdict.status] += 1
        return verdict

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        rec.requests.append((request.path, request.query_string))
        if on_request is not None:
            on_request(request)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            rec.answers.append((request.path, exc.status, exc.headers.get("Retry-After"), ex.now_ms()))
            raise
        rec.answers.append((request.path, resp.status, resp.headers.get("Retry-After"), ex.now_ms()))
        return resp

    def recording_app() -> web.Application:
        app = make_app()
        app.middlewares.insert(0, record)
        return app

    ex.make_app = recording_app
    ex.limiter.check = check
    return rec


DAY_MS = 86_400_000


def day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def trades(first_id: int, n: int, t0_ms: int, span_ms: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    ts = t0_ms + np.sort(rng.integers(0, span_ms, n)).astype(np.int64)
    return pa.table(
        {
            "agg_id": ids,
            "ts_ms": ts,
            "price": 30_000 + rng.normal(0, 5, n).cumsum(),
            "quantity": rng.exponential(0.1, n),
            "first_trade_id": ids * 3,
            "last_trade_id": ids * 3 + 2,
            "is_buyer_maker": rng.random(n) < 0.5,
            "recv_ms": pa.nulls(n, pa.int64()),
        },
        schema=AGG_TRADES,
    )
