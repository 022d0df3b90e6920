"""The writer: binary COPY round trips, idempotent merges of every kind, coverage and gaps, spill
files while the database is down and their replay, refused batches set aside."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import numpy as np
import psycopg
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microstructure.db import migrate
from microstructure.db.embedded import EmbeddedPostgres
from microstructure.ingest.records import AGG_TRADES, BOOK_SNAPSHOTS, KINDS
from microstructure.ingest.sink import coverage
from microstructure.ingest.sink.pgcopy import ColumnSpec, encode_copy_binary
from microstructure.ingest.sink.writer import Writer, write_batch

DAY = 86_400_000
T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC


def trades(ids: list[int] | np.ndarray, t0: int = T0, step_ms: int = 1000) -> pa.Table:
    ids = np.asarray(ids, dtype=np.int64)
    return pa.table(
        {
            "agg_id": ids,
            "ts_ms": t0 + (ids - ids.min() if len(ids) else ids) * step_ms,
            "price": 100.0 + ids * 0.5,
            "quantity": ids * 0.001 + 0.001,
            "first_trade_id": ids * 3,
            "last_trade_id": ids * 3 + 2,
            "is_buyer_maker": ids % 2 == 0,
            "recv_ms": pa.nulls(len(ids), pa.int64()),
        },
        schema=AGG_TRADES,
    )


def run(coro):
    return asyncio.run(coro)


async def _write(dsn: str, kind: str, symbol: str, batch: pa.Table) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await write_batch(conn, kind, symbol, batch)
    finally:
        await conn.close()


floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            floats,
            st.one_of(st.none(), st.booleans()),
            st.one_of(st.none(), st.text(max_size=12)),
            st.one_of(
                st.none(), st.lists(st.one_of(st.none(), st.floats(allow_nan=False, width=64)), max_size=5)
            ),
            st.one_of(st.none(), st.integers(-(2**40), 2**40)),
        ),
        max_size=30,
    )
)
def test_binary_copy_round_trip(db_url: str, rows: list[tuple]) -> None:
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
    table = pa.table(
        {
            "i": pa.array(cols[0], pa.int64()),
            "f": pa.array(cols[1], pa.float64()),
            "b": pa.array(cols[2], pa.bool_()),
            "s": pa.array(cols[3], pa.string()),
            "a": pa.array(cols[4], pa.list_(pa.float64())),
            "ms": pa.array(cols[5], pa.int64()),
        }
    )
    specs = [
        ColumnSpec("i", "bigint"),
        ColumnSpec("f", "double precision"),
        ColumnSpec("b", "boolean"),
        ColumnSpec("s", "text"),
        ColumnSpec("a", "float8[]"),
        ColumnSpec("ms", "timestamptz"),
    ]
    payload = encode_copy_binary(table, specs)

    async def go() -> list:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                "CREATE TEMP TABLE rt (n serial, i bigint, f float8, b bool, s text, a float8[], ms timestamptz)"
            )
            await conn.copy_to_table(
                "rt", source=io.BytesIO(payload), format="binary", columns=["i", "f", "b", "s", "a", "ms"]
            )
            return await conn.fetch(
                "SELECT i, f, b, s, a, (extract(epoch FROM ms) * 1000)::bigint AS ms FROM rt ORDER BY n"
            )
        finally:
            await conn.close()

    got = run(go())
    assert len(got) == len(rows)
    for r, (i, f, b, s, a, ms) in zip(got, rows, strict=True):
        # NUL cannot live in PostgreSQL text; the encoder stores U+FFFD in its place.
        expected_s = None if s is None else s.replace("\x00", "\ufffd")
        assert r["i"] == i and r["b"] == b and r["s"] == expected_s and r["ms"] == ms
        assert (r["f"] is None and f is None) or (
            f is not None and (r["f"] == f or (np.isnan(f) and np.isnan(r["f"])))
        )
        assert r["a"] == a


def test_direct_and_merged_agg_trade_batches_store_each_id_once(db_url: str) -> None:
    # 1..50 into an empty range (direct COPY), a batch repeating an id inside itself (merge path),
    # then 40..60 overlapping what is stored (merge path): 1..60 once each, coverage counts 60.
    first = trades(np.arange(1, 51), T0, 1000)
    twice = trades(np.array([70, 70, 71]), T0 + 70_000, 1000)
    overlap = trades(np.arange(40, 61), T0 + 39_000, 1000)
    assert run(_write(db_url, "agg_trades", "BTCUSDT", first)) == 50
    assert run(_write(db_url, "agg_trades", "BTCUSDT", twice)) == 2
    assert run(_write(db_url, "agg_trades", "BTCUSDT", overlap)) == 10
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT agg_id), min(agg_id), max(agg_id) FROM agg_trades"
        ).fetchone() == (62, 62, 1, 71)
        assert conn.execute("SELECT sum(row_count) FROM agg_trade_coverage").fetchone() == (62,)
        assert conn.execute("SELECT from_id, to_id FROM agg_trade_gaps WHERE status = 'open'").fetchall() == [
            (61, 69)
        ]


def test_a_bad_batch_inside_a_joined_backlog_is_the_only_one_set_aside(db_url: str, tmp_path: Path) -> None:
    def liq(side: str, t: int) -> pa.Table:
        return pa.table({"ts_ms": [t], "trade_ms": [t], "side": [side], "quantity": [1.0], "price": [100.0]})

    async def go() -> Writer:
        w = Writer(db_url, tmp_path / "spill")
        await w.start()
        # Submitted back to back, the three wait in the queue together and are joined into one write.
        for k, side in enumerate(["BUY", "SIDEWAYS", "SELL"]):
            await w.submit("liquidations", "BTCUSDT", liq(side, T0 + k))
        assert await w.flush(timeout=30)
        await w.close()
        return w

    w = run(go())
    assert w.stats.batches_rejected == 1 and w.stats.rows_inserted == 2 and w.stats.batches_committed == 2
    rejected = list((tmp_path / "spill" / "rejected").glob("*.arrow"))
    assert len(rejected) == 1
    assert pa.ipc.open_file(rejected[0]).read_all().column("side").to_pylist() == ["SIDEWAYS"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT side FROM liquidations ORDER BY side").fetchall() == [("BUY",), ("SELL",)]


def test_spill_backlog_is_replayed_in_joined_batches(tmp_path: Path) -> None:
    spill = tmp_path / "spill"

    async def down() -> None:
        w = Writer("postgresql://nobody@127.0.0.1:1/none", spill, max_backoff=0.2, max_queue_batches=1)
        await w.start()
        for k in range(40):
            await w.submit("agg_trades", "BTCUSDT", trades(range(1 + 10 * k, 11 + 10 * k)))
        await w.submit("agg_trades", "ETHUSDT", trades(range(1, 11)))
        await w.close(timeout=0.5)

    run(down())
    assert len(list(spill.glob("*.arrow"))) == 41
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.ensure_running().dsn()
    try:
        migrate.upgrade(dsn)

        async def up() -> Writer:
            w = Writer(dsn, spill)
            await w.start()
            assert await w.flush(timeout=60)
            await w.close()
            return w

        w = run(up())
        assert w.stats.batches_replayed == 41 and w.stats.batches_committed == 41
        assert len(w.stats.latencies_ms) == 1  # one transaction: a flush writes every symbol of a table
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "SELECT symbol, count(*), max(agg_id) FROM agg_trades GROUP BY 1 ORDER BY 1"
            ).fetchall() == [("BTCUSDT", 400, 400), ("ETHUSDT", 10, 10)]
    finally:
        server.stop()
    assert list(spill.glob("*.arrow")) == []


def test_text_with_nul_is_kept_with_replacement(db_url: str) -> None:
    table = pa.table({"s": pa.array(["a\x00b", "\x00", "ok"], pa.string())})
    payload = encode_copy_binary(table, [ColumnSpec("s", "text")])

    async def go() -> list:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("CREATE TEMP TABLE nul (n serial, s text)")
            await conn.copy_to_table("nul", source=io.BytesIO(payload), format="binary", columns=["s"])
            return [r["s"] for r in await conn.fetch("SELECT s FROM nul ORDER BY n")]
        finally:
            await conn.close()

    assert run(go()) == ["a\ufffdb", "\ufffd", "ok"]


def test_agg_trades_idempotent_with_coverage_and_gaps(db_url: str) -> None:
    sym = "BTCUSDT"
    # Two days: ids 1..100 on day 1 (every 864 s) and 101..150 on day 2; written out of order with
    # overlaps and a hole that is filled in two steps.
    day1 = trades(np.arange(1, 101), T0, DAY // 100)
    day2 = trades(np.arange(101, 151), T0 + DAY, 1000)
    assert run(_write(db_url, "agg_trades", sym, day2)) == 50
    assert run(_write(db_url, "agg_trades", sym, day1.slice(0, 40))) == 40  # ids 1..40: hole 41..100
    assert run(_write(db_url, "agg_trades", sym, day1.slice(0, 40))) == 0  # repeated: no-op

    async def state() -> tuple[list, list]:
        conn = await asyncpg.connect(db_url)
        try:
            gaps = await coverage.open_gaps(conn, sym)
            cov = [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT day, first_id, last_id, row_count, missing_count FROM agg_trade_coverage ORDER BY day"
                )
            ]
            return gaps, cov
        finally:
            await conn.close()

    gaps, cov = run(state())
    assert gaps == [(41, 100)]
    assert cov == [(date(2024, 6, 1), 1, 40, 40, 0), (date(2024, 6, 2), 101, 150, 50, 0)]
    assert run(_write(db_url, "agg_trades", sym, day1.slice(60, 20))) == 20  # ids 61..80
    gaps, cov = run(state())
    assert gaps == [(41, 60), (81, 100)]
    assert cov[0] == (date(2024, 6, 1), 1, 80, 60, 20)
    assert run(_write(db_url, "agg_trades", sym, day1)) == 40  # the rest; overlaps skipped
    gaps, cov = run(state())
    assert gaps == []
    assert cov == [(date(2024, 6, 1), 1, 100, 100, 0), (date(2024, 6, 2), 101, 150, 50, 0)]

    async def recomputed() -> list:
        conn = await asyncpg.connect(db_url)
        try:
            return [
                await coverage.recompute_coverage(conn, sym, d) for d in (date(2024, 6, 1), date(2024, 6, 2))
            ]
        finally:
            await conn.close()

    assert run(recomputed()) == [(1, 100, 100, 0), (101, 150, 50, 0)]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT agg_id) FROM agg_trades").fetchone() == (
            150,
            150,
        )
        filled = conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'filled'").fetchone()[0]
        assert filled >= 2
        row = conn.execute(
            "SELECT price, quantity, first_trade_id, last_trade_id, is_buyer_maker, ts FROM agg_trades WHERE agg_id = 7"
        ).fetchone()
        assert row == (
            103.5,
            0.008,
            21,
            23,
            False,
            datetime.fromtimestamp((T0 + 6 * (DAY // 100)) / 1000, UTC),
        )


def test_every_kind_writes_idempotently(db_url: str) -> None:
    n = 3
    book = {
        "ts_ms": [T0, T0 + 500, T0 + 1000],
        "event_ms": [T0 + 1, T0 + 501, T0 + 1001],
        "first_update_id": [1, 5, 9],
        "last_update_id": [4, 8, 12],
        "prev_update_id": [0, 4, 8],
        "source": ["depth20"] * n,
        "bid_px": [[100.0, 99.9]] * n,
        "bid_qty": [[1.0, 2.0]] * n,
        "ask_px": [[100.1, 100.2]] * n,
        "ask_qty": [[1.5, 0.5]] * n,
    }
    batches = {
        "book_snapshots": pa.table(book),
        "mark_prices": pa.table(
            {"ts_ms": [T0, T0 + 1000], "mark_price": [1.0, 2.0], "funding_rate": [1e-4, 2e-4]}
        ),
        "funding_rates": pa.table(
            {"funding_ms": [T0], "funding_rate": [1e-4], "funding_interval_hours": pa.array([8], pa.int32())}
        ),
        "open_interest": pa.table({"ts_ms": [T0], "open_interest": [123.0], "source": ["rest"]}),
        "liquidations": pa.table(
            {
                "ts_ms": [T0],
                "trade_ms": [T0 - 1],
                "side": ["SELL"],
                "quantity": [0.5],
                "price": [99.0],
                "status": ["FILLED"],
            }
        ),
    }
    assert set(batches) | {"agg_trades"} == set(KINDS)
    for kind, batch in batches.items():
        assert run(_write(db_url, kind, "ETHUSDT", batch)) == batch.num_rows, kind
        assert run(_write(db_url, kind, "ETHUSDT", batch)) == 0, kind
    with psycopg.connect(db_url) as conn:
        got = conn.execute(
            "SELECT bid_px, ask_qty, source, last_update_id FROM book_snapshots ORDER BY ts"
        ).fetchall()
        assert got[0] == ([100.0, 99.9], [1.5, 0.5], "depth20", 4)
        assert conn.execute("SELECT funding_interval_hours FROM funding_rates").fetchone() == (8,)
        assert conn.execute("SELECT side, trade_ts < ts FROM liquidations").fetchone() == ("SELL", True)
    assert BOOK_SNAPSHOTS.field("bid_px").type == pa.list_(pa.float64())


def test_a_funding_settlement_seen_again_completes_its_nulls_and_changes_nothing_else(db_url: str) -> None:
    h = 3_600_000
    archive = pa.table(  # monthly archive: interval, no mark price
        {
            "funding_ms": [T0, T0 + 8 * h],
            "funding_rate": [1e-4, 2e-4],
            "funding_interval_hours": pa.array([8, 8], pa.int32()),
        }
    )
    rest = pa.table(  # REST page: mark price; the page's first row has no interval; a different rate
        {
            "funding_ms": [T0, T0 + 8 * h, T0 + 16 * h],
            "funding_rate": [9e-4, 2e-4, 3e-4],
            "mark_price": [100.0, 101.0, 102.0],
            "funding_interval_hours": pa.array([None, 8, 8], pa.int32()),
        }
    )
    assert run(_write(db_url, "funding_rates", "ETHUSDT", archive)) == 2
    assert run(_write(db_url, "funding_rates", "ETHUSDT", rest)) == 3  # 1 new, 2 completed
    assert run(_write(db_url, "funding_rates", "ETHUSDT", rest)) == 0
    assert run(_write(db_url, "funding_rates", "ETHUSDT", archive)) == 0
    with psycopg.connect(db_url) as conn:
        got = conn.execute(
            "SELECT funding_rate, mark_price, funding_interval_hours FROM funding_rates ORDER BY funding_ts"
        ).fetchall()
    # the first source's rate stays; only nulls were filled
    assert got == [(1e-4, 100.0, 8), (2e-4, 101.0, 8), (3e-4, 102.0, 8)]


def test_database_down_spills_then_replays_in_order(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.ensure_running().dsn()
    migrate.upgrade(dsn)
    spill = tmp_path / "spill"

    async def go() -> Writer:
        w = Writer(dsn, spill, max_queue_batches=2, max_backoff=0.5)
        await w.start()
        await w.submit("agg_trades", "BTCUSDT", trades(range(1, 11)))
        assert await w.flush(timeout=30)
        server.stop()
        for k in range(1, 8):  # ids 11..80 while the database is down
            await w.submit("agg_trades", "BTCUSDT", trades(range(1 + 10 * k, 11 + 10 * k)))
        await asyncio.sleep(1.0)
        assert len(list(spill.glob("*.arrow"))) >= 4  # the queue holds 2, the rest is on disk
        assert w.stats.db_errors >= 1
        server.ensure_running()
        assert await w.flush(timeout=60)
        await w.close()
        return w

    w = run(go())
    assert list(spill.glob("*.arrow")) == []
    assert w.stats.batches_replayed >= 4 and w.stats.rows_inserted == 80
    with psycopg.connect(server.status().dsn()) as conn:
        assert conn.execute("SELECT count(*), min(agg_id), max(agg_id) FROM agg_trades").fetchone() == (
            80,
            1,
            80,
        )
        assert conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone() == (0,)
    server.stop()


def test_close_while_down_keeps_batches_on_disk_for_the_next_start(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.ensure_running().dsn()
    migrate.upgrade(dsn)
    server.stop()
    spill = tmp_path / "spill"

    async def first() -> None:
        w = Writer(dsn, spill, max_backoff=0.2)
        await w.start()
        for k in range(3):
            await w.submit("agg_trades", "BTCUSDT", trades(range(1 + 10 * k, 11 + 10 * k)))
        await w.close(timeout=1.0)

    run(first())
    assert len(list(spill.glob("*.arrow"))) == 3
    server.ensure_running()

    async def second() -> Writer:
        w = Writer(dsn, spill)
        await w.start()
        assert await w.flush(timeout=30)
        await w.close()
        return w

    w = run(second())
    assert w.stats.batches_replayed == 3 and list(spill.glob("*.arrow")) == []
    with psycopg.connect(server.status().dsn()) as conn:
        assert conn.execute("SELECT count(*), max(agg_id) FROM agg_trades").fetchone() == (30, 30)
    server.stop()


def test_refused_batch_is_set_aside_and_the_rest_goes_on(db_url: str, tmp_path: Path) -> None:
    bad = pa.table({"ts_ms": [T0], "trade_ms": [T0], "side": ["SIDEWAYS"], "quantity": [1.0], "price": [1.0]})

    async def go() -> Writer:
        w = Writer(db_url, tmp_path / "spill")
        await w.start()
        await w.submit("liquidations", "BTCUSDT", bad)  # violates the side CHECK constraint
        await w.submit("agg_trades", "BTCUSDT", trades(range(1, 6)))
        assert await w.flush(timeout=30)
        await w.close()
        return w

    w = run(go())
    assert w.stats.batches_rejected == 1 and w.stats.rows_inserted == 5
    rejected = list((tmp_path / "spill" / "rejected").glob("*.arrow"))
    assert len(rejected) == 1 and "liquidations" in rejected[0].name
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone() == (5,)
