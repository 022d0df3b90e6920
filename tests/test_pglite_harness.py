"""The PGlite TimescaleDB harness itself: continuous aggregates refresh and give the right numbers,
compression works, and both psycopg and asyncpg can talk to it."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg


def test_continuous_aggregate_refresh_and_compression(pglite_url: str) -> None:
    with psycopg.connect(pglite_url, autocommit=True) as conn:
        conn.execute("DROP MATERIALIZED VIEW IF EXISTS harness_1m CASCADE")
        conn.execute("DROP TABLE IF EXISTS harness_ticks CASCADE")
        conn.execute(
            "CREATE TABLE harness_ticks (sym text NOT NULL, ts timestamptz NOT NULL, px float8, id bigint)"
        )
        conn.execute(
            "SELECT create_hypertable('harness_ticks', 'ts', chunk_time_interval => INTERVAL '1 hour')"
        )
        # 3 minutes of ticks, one every 10 s, price = id.
        conn.execute(
            "INSERT INTO harness_ticks SELECT 'X', timestamptz '2024-01-01 00:00+00' + make_interval(secs => g * 10), "
            "g, g FROM generate_series(0, 17) g"
        )
        conn.execute(
            "CREATE MATERIALIZED VIEW harness_1m WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS "
            "SELECT sym, time_bucket('1 minute', ts) AS bucket, first(px, id) AS open, last(px, id) AS close, "
            "max(px) AS high, count(*) AS n FROM harness_ticks GROUP BY sym, bucket WITH NO DATA"
        )
        assert conn.execute("SELECT count(*) FROM harness_1m").fetchone() == (0,)
        conn.execute("CALL refresh_continuous_aggregate('harness_1m', NULL, NULL)")
        rows = conn.execute("SELECT open, close, high, n FROM harness_1m ORDER BY bucket").fetchall()
        assert rows == [(0.0, 5.0, 5.0, 6), (6.0, 11.0, 11.0, 6), (12.0, 17.0, 17.0, 6)]
        conn.execute(
            "ALTER TABLE harness_ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'sym', "
            "timescaledb.compress_orderby = 'ts')"
        )
        compressed = conn.execute(
            "SELECT count(compress_chunk(c)) FROM show_chunks('harness_ticks') c"
        ).fetchone()
        assert compressed == (1,)
        assert conn.execute("SELECT sum(px) FROM harness_ticks").fetchone() == (sum(range(18)),)
        conn.execute("DROP MATERIALIZED VIEW harness_1m CASCADE")
        conn.execute("DROP TABLE harness_ticks CASCADE")


def test_asyncpg_prepared_statements(pglite_url: str) -> None:
    async def run() -> list[int]:
        conn = await asyncpg.connect(pglite_url)
        try:
            stmt = await conn.prepare("SELECT $1::int + g FROM generate_series(1, 3) g")
            return [r[0] for r in await stmt.fetch(10)]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [11, 12, 13]


def test_each_connection_starts_clean_on_the_shared_backend(pglite_url: str) -> None:
    """PGlite is one backend for every connection in turn: what a client leaves (psycopg's automatic
    prepared statements, an open transaction, temp tables) is gone for the next, as on PostgreSQL."""
    for _ in range(2):  # the second client would meet the first one's "_pg3_0" without the reset
        with psycopg.connect(pglite_url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
            assert conn.execute("SELECT to_regclass('pg_temp.harness_tmp')").fetchone() == (None,)
            assert conn.execute("SHOW search_path").fetchone() == ("public",)
            for i in range(6):  # past psycopg's prepare threshold (5)
                assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
            conn.execute("CREATE TEMP TABLE harness_tmp (x int)")
            conn.commit()
            conn.execute("SELECT 1")  # a transaction left open
