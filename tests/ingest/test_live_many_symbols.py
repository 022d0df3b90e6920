"""Live aggregate trades on many symbols: a stop never waits for REST budget to fetch hundreds of
tails (it records where each stream stood and exits clean within seconds), and the next run fills
every tail from there, so each symbol's ids are contiguous across the two runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import psycopg

from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig, LocalExchange
from microstructure.exchange.config import universe_symbols
from microstructure.ingest.collectors.trades_live import collect_aggtrades_live

SYMBOLS = universe_symbols(30)


def test_a_stop_records_the_tails_it_cannot_afford_and_the_next_run_fills_them(
    db_url: str, tmp_path: Path
) -> None:
    cfg = ExchangeConfig(symbols=("BTCUSDT",), universe=len(SYMBOLS), universe_rate=300.0, seed=5,
                         history_days=0, live_rate=5.0, cache_dir=tmp_path / "cache")  # fmt: skip

    async def run(ex: LocalExchange, seconds: float, budget: int | None) -> tuple[object, float, int]:
        settings = Settings(home=tmp_path / "home")
        settings.point_at_exchange(ex.base_url)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        task = asyncio.create_task(
            collect_aggtrades_live(settings, db_url, SYMBOLS, stop_event=stop, weight_budget=budget)
        )
        await stop.wait()
        t0, at = time.monotonic(), ex.now_ms()
        report = await task
        return report, time.monotonic() - t0, at

    async def go() -> tuple[object, float, object, dict[str, np.ndarray]]:
        async with LocalExchange(cfg) as ex:
            # a budget of 200 weight a minute: 9 tail pages of 20 at most, so most tails wait
            first, stop_s, _ = await run(ex, 4.0, 200)
            second, _, at = await run(ex, 5.0, None)  # the default budget affords every tail
            traded = {s: ex.markets[s].trades_between(0, at + 1).a for s in SYMBOLS}
            return first, stop_s, second, traded

    first, stop_s, second, traded = asyncio.run(go())
    assert first.ok, first.errors  # type: ignore[attr-defined]
    assert stop_s < 15
    left = first.tails_left  # type: ignore[attr-defined]
    assert len(left) >= 15 and first.stop_waited_for_budget  # type: ignore[attr-defined]
    assert any("tails of" in line for line in first.summary_lines())  # type: ignore[attr-defined]
    assert second.ok, second.errors  # type: ignore[attr-defined]
    with psycopg.connect(db_url) as conn:
        recorded = dict(
            conn.execute(
                "SELECT symbol, (detail->>'after_id')::bigint FROM ingest_events WHERE kind = 'tail_left'"
            ).fetchall()
        )
        assert {s: recorded[s] for s in left} == left
        for sym in SYMBOLS:
            ids = np.array(
                [
                    r[0]
                    for r in conn.execute(
                        "SELECT agg_id FROM agg_trades WHERE symbol = %s ORDER BY 1", (sym,)
                    )
                ]
            )
            assert len(ids) > 0, sym
            # every id the exchange traded from the first stored one up to the second run's stop
            want = traded[sym][traded[sym] >= ids[0]]
            assert np.array_equal(ids[: len(want)], want) and len(ids) - len(want) <= 1, sym
        assert conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone() == (0,)
