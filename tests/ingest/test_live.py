"""Live aggregate trades against the local exchange over real websockets and HTTP: the stored
sequence equals the exchange's, with faults (dropped connections, skipped ids, malformed messages,
rotation, redundancy, the database stopped mid-run, an IP ban)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import psycopg
import pyarrow as pa
import pytest
from day_partitions import day_partitions

from microstructure.config import Settings
from microstructure.db import migrate
from microstructure.db.embedded import EmbeddedPostgres
from microstructure.exchange import ExchangeConfig, FaultConfig, LocalExchange
from microstructure.ingest.binance.rest import IpBanned
from microstructure.ingest.collectors.trades_live import collect_aggtrades_live
from microstructure.ingest.records import AGG_TRADES
from microstructure.ingest.sink.writer import Writer, write_batch

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def exchange_config(tmp_path: Path, **faults: object) -> ExchangeConfig:
    return ExchangeConfig(
        symbols=SYMBOLS,
        seed=7,
        history_days=0,
        trades_per_day=20_000,
        live_rate=150.0,
        cache_dir=tmp_path / "cache",
        faults=FaultConfig(**faults),  # type: ignore[arg-type]
    )


def stored(dsn: str, symbol: str) -> tuple[np.ndarray, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT agg_id, price, quantity, first_trade_id, last_trade_id, is_buyer_maker, "
            "(extract(epoch FROM ts) * 1000)::bigint FROM agg_trades WHERE symbol = %s ORDER BY agg_id",
            (symbol,),
        ).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64), rows


def expected(ex: LocalExchange, symbol: str, first_id: int, last_id: int) -> list[tuple]:
    market = ex.markets[symbol]
    spec = market.spec
    tr = market.trades_between(0, ex.now_ms() + 1)
    sel = (tr.a >= first_id) & (tr.a <= last_id)
    return [
        (
            int(a),
            float(p) / 10**spec.price_decimals,
            float(q) / 10**spec.qty_decimals,
            int(f),
            int(last),
            bool(m),
            int(t),
        )
        for a, p, q, f, last, m, t in zip(
            tr.a[sel],
            tr.price[sel],
            tr.qty[sel],
            tr.first[sel],
            tr.last[sel],
            tr.maker[sel],
            tr.T[sel],
            strict=True,
        )
    ]


def continue_from_a_second_ago(ex: LocalExchange, dsn: str) -> dict[str, int]:
    """Store each symbol's trade of a second ago with the exchange's values, as a run stopped then
    would have: the run must continue from the next id, so the sequence's head is known exactly."""
    since: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        for sym in SYMBOLS:
            market = ex.markets[sym]
            spec = market.spec
            tr = market.trades_between(0, ex.now_ms() - 1_000)
            t = int(tr.T[-1])
            day_partitions(conn, "agg_trades", t)
            conn.execute(
                "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, "
                "is_buyer_maker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    sym,
                    int(tr.a[-1]),
                    datetime.fromtimestamp(t // 1000, tz=UTC) + timedelta(milliseconds=t % 1000),
                    float(tr.price[-1]) / 10**spec.price_decimals,
                    float(tr.qty[-1]) / 10**spec.qty_decimals,
                    int(tr.first[-1]),
                    int(tr.last[-1]),
                    bool(tr.maker[-1]),
                ),
            )
            since[sym] = int(tr.a[-1])
    return since


def stop_after(ex: LocalExchange, seconds: float) -> tuple[asyncio.Event, list[int]]:
    """A stop event set after `seconds`; the list receives the exchange's clock at that moment."""
    stop = asyncio.Event()
    at: list[int] = []

    def fire() -> None:
        at.append(ex.now_ms())
        stop.set()

    asyncio.get_running_loop().call_later(seconds, fire)
    return stop, at


def assert_whole_sequence(ex: LocalExchange, dsn: str, since: dict[str, int], stop_ms: int) -> None:
    """Stored = the exchange's own sequence for the run: from the id the run continued after (head) to
    at least the last id the exchange produced up to the stop (tail, which the run's REST tail fill
    fetches), every id once, values equal."""
    for sym in SYMBOLS:
        ids, rows = stored(dsn, sym)
        tr = ex.markets[sym].trades_between(0, ex.now_ms() + 1)
        last_at_stop = int(ex.markets[sym].trades_between(0, stop_ms + 1).a[-1])
        assert len(ids) > 50, sym
        assert ids[0] == since[sym], (
            f"{sym}: stored ids begin at {ids[0]}, the run continued after {since[sym]}"
        )
        assert ids[-1] >= last_at_stop, (
            f"{sym}: tail lost: last stored {ids[-1]}, exchange at stop {last_at_stop}"
        )
        assert ids[-1] <= int(tr.a[-1])
        assert np.array_equal(ids, np.arange(since[sym], ids[-1] + 1)), f"{sym}: ids missing or doubled"
        exp = expected(ex, sym, since[sym], int(ids[-1]))
        assert len(exp) == len(rows)
        for got, want in zip(rows, exp, strict=True):
            assert got[0] == want[0] and got[3:] == want[3:]
            assert got[1] == pytest.approx(want[1], rel=1e-12) and got[2] == pytest.approx(want[2], rel=1e-12)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone() == (0,)


def test_live_with_dropped_connections_skipped_ids_and_malformed(db_url: str, tmp_path: Path) -> None:
    cfg = exchange_config(tmp_path, ws_close_after=400, ws_skip_agg_trades=0.02, ws_malformed=0.01)

    async def go() -> object:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            since = continue_from_a_second_ago(ex, db_url)
            stop, stop_ms = stop_after(ex, 6)
            report = await collect_aggtrades_live(
                settings, db_url, list(SYMBOLS), stop_event=stop, stale_timeout=5, batch_ms=100
            )
            assert_whole_sequence(ex, db_url, since, stop_ms[0])
            return report

    report = asyncio.run(go())
    assert report.ok, report.errors
    assert report.reconnects >= 2  # the exchange closed connections every 400 messages
    assert report.malformed >= 1
    assert sum(s.gaps_detected for s in report.symbols.values()) >= 2
    assert sum(s.rest_rows for s in report.symbols.values()) >= 2
    assert not list((tmp_path / "home" / "spill").glob("*.arrow"))


def test_redundant_connections_and_rotation_store_each_id_once(db_url: str, tmp_path: Path) -> None:
    cfg = exchange_config(tmp_path)

    async def go() -> object:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            since = continue_from_a_second_ago(ex, db_url)
            stop, stop_ms = stop_after(ex, 5)
            report = await collect_aggtrades_live(
                settings,
                db_url,
                list(SYMBOLS),
                stop_event=stop,
                redundant=True,
                rotate_after=1.5,
                batch_ms=100,
            )
            assert_whole_sequence(ex, db_url, since, stop_ms[0])
            return report

    report = asyncio.run(go())
    assert report.rotations >= 4  # two copies, each rotated at least twice
    dups = sum(s.duplicates for s in report.symbols.values())
    ws_rows = sum(s.ws_rows for s in report.symbols.values())
    assert dups >= ws_rows * 0.5  # the second copy delivers (almost) everything again
    assert report.writer["rows_inserted"] == report.writer["rows_committed"]


def test_a_gap_too_wide_for_rest_is_left_open_for_historical_mode(db_url: str, tmp_path: Path) -> None:
    cfg = exchange_config(tmp_path)

    async def go() -> tuple[object, int]:
        async with LocalExchange(cfg) as ex:
            first_live = int(ex.markets["BTCUSDT"].trades_between(0, ex.now_ms() + 1).a[-1])
            old = first_live - 5_000  # as if the last run stopped 5,000 ids ago
            with psycopg.connect(db_url) as conn:
                day_partitions(conn, "agg_trades", ex.now_ms() - 3_600_000)
                conn.execute(
                    "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, "
                    "is_buyer_maker) VALUES ('BTCUSDT', %s, now() - interval '1 hour', 1, 1, 1, 1, false)",
                    (old,),
                )
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            report = await collect_aggtrades_live(
                settings, db_url, ["BTCUSDT"], live_seconds=2, batch_ms=100, max_rest_fill_ids=1_000
            )
            return report, old

    report, old = asyncio.run(go())
    btc = report.symbols["BTCUSDT"]  # type: ignore[attr-defined]
    assert btc.gaps_left_for_historical == 1 and btc.gap_ids_filled == btc.rest_rows
    assert btc.rest_rows < 1_000  # only the tail at the stop, not the 5,000 missing ids
    assert any("run --mode historical" in line for line in report.summary_lines())  # type: ignore[attr-defined]
    with psycopg.connect(db_url) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM agg_trades WHERE symbol = 'BTCUSDT' AND agg_id > %s", (old,)
        ).fetchone()
        assert 0 < n < 5_000


def test_database_stopped_for_20_s_mid_run_with_every_fault_loses_nothing(tmp_path: Path) -> None:
    """The issue's acceptance run: connections dropped every few hundred messages, ids skipped on the
    websocket, forced rotations, and the database stopped for 20 s; afterwards the stored sequence
    equals the exchange's, with no gap, no duplicate and no spill file left."""
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.ensure_running().dsn()
    migrate.upgrade(dsn)
    cfg = exchange_config(tmp_path, ws_close_after=600, ws_skip_agg_trades=0.01)

    async def go() -> tuple[object, int]:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            # A small memory queue, so the outage overflows it onto disk.
            writer = Writer(dsn, settings.home / "spill", max_queue_batches=8, max_backoff=1.0)
            await writer.start()
            since = continue_from_a_second_ago(ex, dsn)
            stop, stop_ms = stop_after(ex, 28)
            task = asyncio.create_task(
                collect_aggtrades_live(
                    settings, dsn, list(SYMBOLS), stop_event=stop, batch_ms=100, rotate_after=6, writer=writer
                )
            )
            await asyncio.sleep(3)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(20)
            spilled_while_down = len(list((tmp_path / "home" / "spill").glob("*.arrow")))
            # The restarted server keeps its port, so the collector's DSN stays valid.
            assert (await asyncio.to_thread(server.ensure_running)).dsn() == dsn
            report = await task
            await writer.close()
            assert_whole_sequence(ex, dsn, since, stop_ms[0])
            return report, spilled_while_down

    try:
        report, spilled_while_down = asyncio.run(go())
    finally:
        server.stop()
    assert report.ok, report.errors  # type: ignore[attr-defined]
    assert report.reconnects >= 2 and report.rotations >= 2  # type: ignore[attr-defined]
    assert sum(s.gaps_detected for s in report.symbols.values()) >= 2  # type: ignore[attr-defined]
    assert report.writer["db_errors"] >= 1  # type: ignore[attr-defined]
    assert spilled_while_down >= 1  # batches went to disk while the database was away
    assert not list((tmp_path / "home" / "spill").glob("*.arrow"))


def test_a_418_during_gap_filling_stops_the_run_and_flushes_what_it_holds(
    db_url: str, tmp_path: Path
) -> None:
    """Another program of the same IP gets it banned mid-run: the next REST gap fill is answered 418 and
    the run stops at once, raising IpBanned with the ban's length, after writing the websocket rows it
    held (batches here are only written at the stop: nothing would reach the database otherwise)."""
    cfg = dataclasses.replace(
        exchange_config(tmp_path, ws_skip_agg_trades=0.02), weight_limit=600, ban_seconds=300
    )

    async def go() -> tuple[IpBanned, list[int], float, int]:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            task = asyncio.create_task(
                collect_aggtrades_live(
                    settings, db_url, list(SYMBOLS), live_seconds=300, batch_rows=10**7, batch_ms=3_600_000
                )
            )
            await asyncio.sleep(2.5)
            assert not task.done()
            statuses: list[int] = []
            async with aiohttp.ClientSession() as s:
                while (not statuses or statuses[-1] != 418) and len(statuses) < 500:
                    url = ex.base_url + "/fapi/v1/aggTrades"
                    async with s.get(url, params={"symbol": "BTCUSDT", "limit": "1"}) as r:
                        statuses.append(r.status)
            banned_at = time.monotonic()
            requests_then = ex.request_count
            with pytest.raises(IpBanned) as info:
                await asyncio.wait_for(task, 90)
            return info.value, statuses, time.monotonic() - banned_at, ex.request_count - requests_then

    exc, statuses, stopped_in, requests_after = asyncio.run(go())
    assert statuses[-1] == 418
    assert re.search(r"HTTP 418\) for (29\d|300) s", str(exc)), str(exc)
    # at once, or (if the collector's own request was the one answered 429) after its Retry-After
    assert stopped_in < 75  # not at live_seconds
    assert requests_after <= 2  # the one gap fill answered 418 (at most one more already on its way)
    with psycopg.connect(db_url) as conn:
        for sym in SYMBOLS:
            (n,) = conn.execute(
                "SELECT count(*) FROM agg_trades WHERE symbol = %s AND recv_ts IS NOT NULL", (sym,)
            ).fetchone()
            assert n > 100, sym  # the websocket rows it held were written at the stop
    assert not list((tmp_path / "home" / "spill").glob("*.arrow"))


# ---------------------------------------------------------------- gaps are durable work


def exchange_rows(ex: LocalExchange, symbol: str, lo: int, hi: int) -> pa.Table:
    """The exchange's own aggregate trades lo..hi as a writer batch (as a REST fill would store them)."""
    market = ex.markets[symbol]
    spec = market.spec
    tr = market.trades_between(0, ex.now_ms() + 1)
    sel = (tr.a >= lo) & (tr.a <= hi)
    return pa.Table.from_arrays(
        [
            pa.array(tr.a[sel].astype(np.int64)),
            pa.array(tr.T[sel].astype(np.int64)),
            pa.array(tr.price[sel] / 10**spec.price_decimals),
            pa.array(tr.qty[sel] / 10**spec.qty_decimals),
            pa.array(tr.first[sel].astype(np.int64)),
            pa.array(tr.last[sel].astype(np.int64)),
            pa.array(tr.maker[sel].astype(bool)),
            pa.nulls(int(sel.sum()), pa.int64()),
        ],
        schema=AGG_TRADES,
    )


async def store(dsn: str, symbol: str, batch: pa.Table) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await write_batch(conn, "agg_trades", symbol, batch)
    finally:
        await conn.close()


def test_malformed_rest_replies_and_429s_are_retried_until_every_id_is_stored(
    db_url: str, tmp_path: Path
) -> None:
    """REST gap fills answered malformed (fields removed, text cut) or 429 are tried again with backoff
    until they succeed: no id is given up (the issue's `KeyError: 'a'` lost them for good)."""
    cfg = exchange_config(
        tmp_path,
        ws_skip_agg_trades=0.03,
        rest_malformed=0.4,
        rest_malformed_paths=("/fapi/v1/aggTrades",),
        rest_429_rate=0.05,
    )

    async def go() -> object:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            since = continue_from_a_second_ago(ex, db_url)
            stop, stop_ms = stop_after(ex, 6)
            report = await collect_aggtrades_live(
                settings, db_url, list(SYMBOLS), stop_event=stop, stale_timeout=5, batch_ms=100
            )
            assert_whole_sequence(ex, db_url, since, stop_ms[0])
            return report

    report = asyncio.run(go())
    assert report.ok, report.errors  # type: ignore[attr-defined]
    stats = report.symbols.values()  # type: ignore[attr-defined]
    assert sum(s.gaps_detected for s in stats) >= 2
    assert sum(s.fill_retries for s in stats) >= 1  # some fills failed and were tried again
    assert report.writer["gaps_recorded"] >= 2  # type: ignore[attr-defined]  # recorded before the fills


def test_a_live_run_starts_by_filling_the_gaps_earlier_runs_left_open(db_url: str, tmp_path: Path) -> None:
    """An earlier run stored ids around a hole and died before filling it (the gap is open in
    agg_trade_gaps): the next live run fills it first, though it continues from the largest id."""
    cfg = exchange_config(tmp_path)

    async def go() -> tuple[object, int, int]:
        async with LocalExchange(cfg) as ex:
            x = int(ex.markets["BTCUSDT"].trades_between(0, ex.now_ms() - 1_000).a[-1])
            lo = x - 600
            await store(db_url, "BTCUSDT", exchange_rows(ex, "BTCUSDT", lo, x - 401))
            await store(db_url, "BTCUSDT", exchange_rows(ex, "BTCUSDT", x - 200, x))
            with psycopg.connect(db_url) as conn:
                gaps = conn.execute(
                    "SELECT from_id, to_id FROM agg_trade_gaps WHERE status = 'open'"
                ).fetchall()
            assert gaps == [(x - 400, x - 201)]
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            stop, stop_ms = stop_after(ex, 3)
            report = await collect_aggtrades_live(
                settings, db_url, ["BTCUSDT"], stop_event=stop, batch_ms=100
            )
            last_at_stop = int(ex.markets["BTCUSDT"].trades_between(0, stop_ms[0] + 1).a[-1])
            return report, lo, last_at_stop

    report, lo, last_at_stop = asyncio.run(go())
    assert report.ok, report.errors  # type: ignore[attr-defined]
    assert report.symbols["BTCUSDT"].gaps_from_earlier_runs == 1  # type: ignore[attr-defined]
    ids, _ = stored(db_url, "BTCUSDT")
    assert ids[0] == lo and ids[-1] >= last_at_stop
    assert np.array_equal(ids, np.arange(lo, ids[-1] + 1))
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone() == (0,)


def test_an_open_gap_older_than_rest_history_is_left_for_historical_mode(db_url: str, tmp_path: Path) -> None:
    """REST serves about a year of aggregate trades: a gap between two rows of two years ago is not
    fetched by a live run, which says to run historical mode for it."""
    cfg = exchange_config(tmp_path)
    old = pa.Table.from_pydict(
        {
            "agg_id": [100, 200],
            "ts_ms": [int(time.time() * 1000) - 730 * 86_400_000] * 2,
            "price": [1.0, 1.0],
            "quantity": [1.0, 1.0],
            "first_trade_id": [1, 2],
            "last_trade_id": [1, 2],
            "is_buyer_maker": [False, True],
            "recv_ms": pa.nulls(2, pa.int64()),
        },
        schema=AGG_TRADES,
    )
    asyncio.run(store(db_url, "ETHUSDT", old))

    async def go() -> object:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            return await collect_aggtrades_live(
                settings, db_url, ["ETHUSDT"], live_seconds=2, batch_ms=100, max_rest_fill_ids=1_000
            )

    report = asyncio.run(go())
    eth = report.symbols["ETHUSDT"]  # type: ignore[attr-defined]
    # the old gap at the start, and the websocket's jump from id 200 to now (wider than 1,000 ids)
    assert eth.gaps_left_for_historical >= 2 and eth.gaps_from_earlier_runs == 0
    assert any("run --mode historical" in line for line in report.summary_lines())  # type: ignore[attr-defined]
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT status FROM agg_trade_gaps WHERE symbol = 'ETHUSDT' AND from_id = 101"
        ).fetchone() == ("open",)


def test_neighbouring_gaps_share_a_rest_request_and_the_summary_shows_budget_waits(
    db_url: str, tmp_path: Path
) -> None:
    """One `fromId` page serves every gap within its 1,000 ids, and fills are paced under the budget
    the exchange announces: many skipped ids cost few requests, and none is lost."""
    cfg = dataclasses.replace(exchange_config(tmp_path, ws_skip_agg_trades=0.1), weight_limit=600)

    async def go() -> object:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            since = continue_from_a_second_ago(ex, db_url)
            stop, stop_ms = stop_after(ex, 6)
            report = await collect_aggtrades_live(
                settings, db_url, list(SYMBOLS), stop_event=stop, batch_ms=100
            )
            assert_whole_sequence(ex, db_url, since, stop_ms[0])
            return report

    report = asyncio.run(go())
    assert report.ok, report.errors  # type: ignore[attr-defined]
    stats = list(report.symbols.values())  # type: ignore[attr-defined]
    gaps, requests = sum(s.gaps_detected for s in stats), sum(s.fill_requests for s in stats)
    assert gaps >= 50 and requests <= gaps / 4, (gaps, requests)
    line = next(x for x in report.summary_lines() if x.startswith("REST:"))  # type: ignore[attr-defined]
    assert "budget 480/min (exchange limit 600)" in line and "waited for budget" in line
