"""One flush writes every symbol of a table: `write_rows` on the rows of many symbols leaves exactly
what one `write_batch` per symbol leaves (rows, coverage, gaps, the invalidation log, the book's
OFI terms), in a fixed number of statements; the Writer joins the queued batches of every symbol
of a kind into one transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import numpy as np
import psycopg
import pyarrow as pa
from features.fx_cases import book_levels, snapshots
from test_writer import T0, trades

from microstructure.ingest.collectors.book_values import BookValues
from microstructure.ingest.sink.writer import Writer, write_batch, write_rows

SYMBOLS = [f"S{k}USDT" for k in range(6)]

# (first id, last id, gap fill) per step; each symbol's ids are offset by 1,000 x its index, and
# symbol 0 skips step 2 (its rows of step 3 then open a gap the others never had)
STEPS = [(1, 10, False), (15, 20, False), (12, 13, True), (5, 16, False), (21, 30, False), (11, 14, False)]


def step_batch(k: int, lo: int, hi: int) -> pa.Table:
    # an id's time is the same in every step: a repeat is the same row
    return trades(np.arange(lo, hi + 1) + 1000 * k, t0=T0 + 7 * k + lo * 60_000, step_ms=60_000)


async def _steps(dsn: str, prefix: str, joined: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for n, (lo, hi, fill) in enumerate(STEPS):
            parts = [
                (f"{prefix}{s}", step_batch(k, lo, hi))
                for k, s in enumerate(SYMBOLS)
                if not (k == 0 and n == 1)
            ]
            if joined:
                batch = pa.concat_tables([b for _, b in parts])
                syms = pa.array([s for s, b in parts for _ in range(b.num_rows)])
                await write_rows(conn, "agg_trades", batch, syms, gap_fill=fill)
            else:
                for s, b in parts:
                    await write_batch(conn, "agg_trades", s, b, gap_fill=fill)
    finally:
        await conn.close()


def _state(dsn: str, prefix: str) -> dict[str, list[tuple]]:
    n = len(prefix)
    with psycopg.connect(dsn) as conn:
        q = {
            "rows": "SELECT substr(symbol, %s), agg_id, ts, price FROM agg_trades WHERE symbol LIKE %s ORDER BY 1, 2",
            "coverage": "SELECT substr(symbol, %s), day, first_id, last_id, row_count, missing_count "
            "FROM agg_trade_coverage WHERE symbol LIKE %s ORDER BY 1, 2",
            "gaps": "SELECT substr(symbol, %s), from_id, to_id, status FROM agg_trade_gaps WHERE symbol LIKE %s ORDER BY 1, 2",
            "log": "SELECT substr(symbol, %s), table_name, lo, hi FROM raw_invalidations WHERE symbol LIKE %s ORDER BY 1, 3, 4",
        }
        return {k: conn.execute(v, (n + 1, prefix + "%")).fetchall() for k, v in q.items()}


def test_one_flush_of_many_symbols_leaves_what_one_batch_per_symbol_leaves(db_url: str) -> None:
    asyncio.run(_steps(db_url, "A", joined=False))
    asyncio.run(_steps(db_url, "B", joined=True))
    one, joined = _state(db_url, "A"), _state(db_url, "B")
    assert len(one["rows"]) == 5 * 30 + 26  # symbol 0 lacks 17..20
    assert one == joined
    # the gap symbol 0 had (its step 2 missing) and what the others filled: real rows, both ways
    assert [g for g in joined["gaps"] if g[0] == SYMBOLS[0]] == [(SYMBOLS[0], 17, 20, "open")]
    assert {g[3] for g in joined["gaps"] if g[0] != SYMBOLS[0]} == {"filled"}


def test_joined_book_snapshots_get_the_same_ofi_terms(db_url: str) -> None:
    rng = np.random.default_rng(5)
    rows = {s: [(T0 + 500 * i, 10 + i, *book_levels(rng, 100.0 + k + rng.normal(0, 0.1))) for i in range(8)]
            for k, s in enumerate(SYMBOLS[:3])}  # fmt: skip

    async def go() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            for half in (slice(0, 4), slice(4, 8)):
                for s, r in rows.items():
                    await write_batch(conn, "book_snapshots", "A" + s, snapshots(r[half], BookValues(), s))
                parts = [("B" + s, snapshots(r[half], BookValues(), s)) for s, r in rows.items()]
                syms = pa.array([s for s, b in parts for _ in range(b.num_rows)])
                got = await write_rows(conn, "book_snapshots", pa.concat_tables([b for _, b in parts]), syms)
                assert got == {s: 4 for s, _ in parts}
        finally:
            await conn.close()

    asyncio.run(go())
    with psycopg.connect(db_url) as conn:

        def ofi(prefix: str) -> list[tuple]:
            return conn.execute(
                "SELECT substr(symbol, 2), ts, ofi FROM book_snapshots WHERE symbol LIKE %s ORDER BY 1, 2",
                (prefix + "%",),
            ).fetchall()

        a, b = ofi("A"), ofi("B")
        assert len(a) == 24 and a == b
        assert sum(r[2] is not None for r in a) == 21  # every row but each symbol's first has its term
        logs = conn.execute(
            "SELECT substr(symbol, 2), lo, hi FROM raw_invalidations WHERE table_name = 'book_snapshots' "
            "AND symbol LIKE %s ORDER BY 1, 2"
        , ("B%",)).fetchall()  # fmt: skip
        assert len(logs) == 6  # one range per symbol and flush


def test_the_writer_joins_every_symbol_of_a_kind_into_one_transaction(db_url: str, tmp_path: Path) -> None:
    symbols = [f"J{k:03d}USDT" for k in range(120)]
    seen: dict[str, int] = {}

    def on_commit(kind: str, symbol: str, batch: pa.Table, inserted: int) -> None:
        assert batch.num_rows == inserted
        seen[symbol] = seen.get(symbol, 0) + inserted

    async def go() -> Writer:
        w = Writer(db_url, tmp_path / "spill", on_commit=on_commit)
        await w.start()
        await w.flush()
        for k, s in enumerate(symbols):
            w.submit_nowait("agg_trades", s, trades(range(1, 4), t0=T0 + k))
            w.submit_nowait(
                "mark_prices",
                s,
                pa.table({"ts_ms": pa.array([T0 + k], pa.int64()), "mark_price": pa.array([1.0 + k])}),
            )
        assert await w.flush(timeout=60)
        await w.close()
        return w

    w = asyncio.run(go())
    # 240 batches of two tables: two transactions, one per table
    assert w.stats.batches_committed == 240 and len(w.stats.latencies_ms) == 2
    assert seen == {s: 4 for s in symbols}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT symbol) FROM agg_trades").fetchone() == (
            360,
            120,
        )
        assert conn.execute("SELECT count(*) FROM mark_prices").fetchone() == (120,)
        assert conn.execute(
            "SELECT count(*) FROM raw_invalidations WHERE table_name = 'agg_trades'"
        ).fetchone() == (120,)


def test_submit_many_is_one_item_one_spill_file_and_every_symbol_comes_back(
    db_url: str, tmp_path: Path
) -> None:
    """What a collector holds for 300 symbols is ONE queue item: while the database is away it is ONE
    spill file (not 300, each fsynced), and the writer that replays the folder stores every symbol's
    rows under its own symbol."""
    symbols = [f"M{k:03d}USDT" for k in range(300)]
    batches = [(s, trades(range(1 + k, 4 + k), t0=T0 + k)) for k, s in enumerate(symbols)]
    spill = tmp_path / "spill"

    async def go() -> tuple[int, int, int]:
        away = Writer("postgresql://postgres@127.0.0.1:9/postgres", spill, spill_after=0.5, max_backoff=0.2)
        await away.start()
        away.submit_many("agg_trades", batches)
        depth = away.queue_depth + (away._current is not None)
        for _ in range(100):
            if away.spill_files:
                break
            await asyncio.sleep(0.05)
        await away.close(timeout=1)
        files = len(list(spill.glob("*.arrow")))
        back = Writer(db_url, spill)
        await back.start()
        assert await back.flush(timeout=60)
        await back.close()
        return depth, files, back.stats.rows_inserted

    depth, files, inserted = asyncio.run(go())
    assert depth == 1 and files == 1 and inserted == 900
    assert not list(spill.glob("*.arrow"))
    with psycopg.connect(db_url) as conn:
        got = conn.execute(
            "SELECT symbol, array_agg(agg_id ORDER BY agg_id) FROM agg_trades WHERE symbol LIKE 'M%' GROUP BY 1"
        ).fetchall()
    assert dict(got) == {s: [1 + k, 2 + k, 3 + k] for k, s in enumerate(symbols)}


def test_a_refused_submit_many_sets_aside_only_the_bad_symbol(db_url: str, tmp_path: Path) -> None:
    def liq(side: str, t: int) -> pa.Table:
        return pa.table({"ts_ms": [t], "trade_ms": [t], "side": [side], "quantity": [1.0], "price": [100.0]})

    async def go() -> Writer:
        w = Writer(db_url, tmp_path / "spill")
        await w.start()
        w.submit_many(
            "liquidations",
            [("R1USDT", liq("BUY", T0)), ("R2USDT", liq("SIDEWAYS", T0)), ("R3USDT", liq("SELL", T0))],
        )
        assert await w.flush(timeout=30)
        await w.close()
        return w

    w = asyncio.run(go())
    assert w.stats.batches_rejected == 1 and w.stats.rows_inserted == 2
    rejected = list((tmp_path / "spill" / "rejected").glob("*.arrow"))
    assert [p.name.split("-", 2)[2] for p in rejected] == ["R2USDT.arrow"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT symbol, side FROM liquidations WHERE symbol LIKE 'R_USDT' ORDER BY 1"
        ).fetchall() == [("R1USDT", "BUY"), ("R3USDT", "SELL")]


def test_a_pull_of_many_symbols_is_one_transaction_and_the_window_follows_the_write_time(
    db_url: str, tmp_path: Path
) -> None:
    """A pull source holding 300 symbols' rows becomes one item (one transaction), never 300 queued
    batches over the queue's bound (which spilled them to disk); quiet, the pull window is the
    short bound, so rows are queryable within a few ms of the poke."""
    symbols = [f"P{k:03d}USDT" for k in range(300)]
    held: list[tuple[str, str, pa.Table]] = []

    async def go() -> tuple[Writer, float]:
        w = Writer(db_url, tmp_path / "spill", max_queue_batches=16)
        await w.start()
        w.add_source(lambda: [held.pop() for _ in range(len(held))])
        held.extend(("agg_trades", s, trades(range(1, 3), t0=T0 + k)) for k, s in enumerate(symbols))
        w.poke()
        for _ in range(400):
            if w.stats.rows_committed == 600:
                break
            await asyncio.sleep(0.025)
        window = w.pull_window()
        await w.close()
        return w, window

    w, window = asyncio.run(go())
    assert w.stats.rows_committed == 600 and w.stats.batches_spilled == 0
    assert len(w.stats.latencies_ms) == 1  # one transaction for the 300 symbols
    assert w.min_pull_interval <= window <= w.pull_interval


def test_one_flush_with_the_same_settlement_twice_keeps_one_row_with_what_each_source_knew(
    db_url: str,
) -> None:
    """A settlement from an archive (interval, no mark price) and from REST (mark price, no interval)
    joined in one flush: one row with both (ON CONFLICT DO UPDATE may not touch a row twice in one
    statement; the writer merges the staged copies first)."""
    from microstructure.ingest.collectors.market import funding_table

    t = 1_700_006_400_000
    archive = funding_table([(t, 0.0001, None, 8), (t + 28_800_000, 0.0002, None, 8)])
    rest = funding_table([(t, 0.0001, 37_000.5, None)])
    batch = pa.concat_tables([archive, rest])
    syms = pa.array(["FUNDUSDT"] * batch.num_rows)

    async def go() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await write_rows(conn, "funding_rates", batch, syms)
        finally:
            await conn.close()

    asyncio.run(go())
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT (extract(epoch FROM funding_ts) * 1000)::bigint, funding_rate, mark_price, funding_interval_hours "
            "FROM funding_rates WHERE symbol = 'FUNDUSDT' ORDER BY 1"
        ).fetchall()
    assert rows == [(t, 0.0001, 37_000.5, 8), (t + 28_800_000, 0.0002, None, 8)]
