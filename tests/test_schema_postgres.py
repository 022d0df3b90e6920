"""Migrations on plain PostgreSQL (the embedded default): ordinary tables, compat functions that
behave like TimescaleDB's, idempotent natural keys, upgrade twice is a no-op, downgrade removes all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from day_partitions import day_partitions
from schema_catalog import catalog_snapshot

from microstructure.db import migrate
from microstructure.db.tables import TIME_TABLES

RAW_TABLES = {t.name for t in TIME_TABLES}
BOOKKEEPING = {
    "symbol_settings",
    "ingest_checkpoints",
    "agg_trade_coverage",
    "agg_trade_gaps",
    "ingest_events",
    "microstructure_meta",
}


def test_upgrade_creates_ordinary_tables_with_time_indexes(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        kinds = dict(
            conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                "AND relkind IN ('r', 'p')"
            ).fetchall()
        )
        assert set(kinds) >= RAW_TABLES | BOOKKEEPING
        # ordinary tables, but for the two that grow by millions a day: partitioned by UTC day (0006)
        assert {t: kinds[t] for t in RAW_TABLES if kinds[t] != "r"} == {
            "agg_trades": "p",
            "book_snapshots": "p",
        }
        engine = conn.execute("SELECT value FROM microstructure_meta WHERE key = 'engine'").fetchone()
        assert engine == ("postgresql",)
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == (
            0,
        )
        idx = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'agg_trades'")}
        assert any("(symbol, ts)" in d for d in idx), idx
        assert any("(symbol, agg_id, ts)" in d and "UNIQUE" in d for d in idx), idx


def test_time_bucket_compat_matches_timescaledb_semantics(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        cases = [
            (
                "1 minute",
                datetime(2024, 3, 1, 12, 34, 56, 789000, tzinfo=UTC),
                datetime(2024, 3, 1, 12, 34, tzinfo=UTC),
            ),
            (
                "5 minutes",
                datetime(2024, 3, 1, 12, 34, 56, tzinfo=UTC),
                datetime(2024, 3, 1, 12, 30, tzinfo=UTC),
            ),
            (
                "15 minutes",
                datetime(2024, 3, 1, 12, 44, 59, 999000, tzinfo=UTC),
                datetime(2024, 3, 1, 12, 30, tzinfo=UTC),
            ),
            ("1 day", datetime(2024, 3, 1, 23, 59, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
            (
                "15 minutes",
                datetime(1999, 12, 31, 23, 50, tzinfo=UTC),
                datetime(1999, 12, 31, 23, 45, tzinfo=UTC),
            ),
            (
                "10 seconds",
                datetime(2024, 3, 1, 0, 0, 19, tzinfo=UTC),
                datetime(2024, 3, 1, 0, 0, 10, tzinfo=UTC),
            ),
        ]
        for width, ts, expected in cases:
            got = conn.execute("SELECT time_bucket(%s::interval, %s::timestamptz)", (width, ts)).fetchone()[0]
            assert got == expected, (width, ts)
        # TimescaleDB aligns weeks to Monday 2000-01-03.
        week = conn.execute(
            "SELECT time_bucket('7 days'::interval, '2024-03-06 10:00+00'::timestamptz)"
        ).fetchone()[0]
        assert week == datetime(2024, 3, 4, tzinfo=UTC) and week.weekday() == 0
        ints = conn.execute(
            "SELECT time_bucket(60000::bigint, 1700000012345::bigint), time_bucket(10::bigint, -3::bigint), "
            "time_bucket(10, 20), time_bucket(10::bigint, -10::bigint)"
        ).fetchone()
        assert ints == (1699999980000, -10, 20, -10)


def test_first_last_compat(db_url: str) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        (1.5, base + timedelta(seconds=2), 5),
        (2.5, base + timedelta(seconds=1), 7),
        (3.5, base + timedelta(seconds=3), 6),
        (None, None, None),
        (9.0, None, None),
    ]
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TEMP TABLE x (v float8, t timestamptz, i bigint, g int)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO x VALUES (%s, %s, %s, 1)", rows)
            cur.executemany("INSERT INTO x VALUES (%s, %s, %s, 2)", [(4.0, base, 1), (5.0, base, 1)])
        got = conn.execute(
            "SELECT first(v, t), last(v, t), first(v, i), last(v, i) FROM x WHERE g = 1"
        ).fetchone()
        assert got == (2.5, 3.5, 1.5, 2.5)  # NULL times are ignored
        # Grouped, and over an empty set.
        grouped = conn.execute(
            "SELECT g, first(i, t), last(i::numeric, i) FROM x GROUP BY g ORDER BY g"
        ).fetchall()
        assert grouped == [(1, 7, 7), (2, 1, 1)]
        assert conn.execute("SELECT first(v, t) FROM x WHERE false").fetchone() == (None,)
        # Parallel plans use the combine function: same answer on a larger table.
        conn.execute(
            "CREATE TEMP TABLE big AS SELECT g::float8 AS v, g::bigint AS i FROM generate_series(1, 200000) g"
        )
        assert conn.execute("SELECT first(v, i), last(v, i) FROM big").fetchone() == (1.0, 200000.0)


def test_natural_keys_make_writes_idempotent(db_url: str) -> None:
    row = ("BTCUSDT", 42, datetime(2024, 1, 1, tzinfo=UTC), 42000.1, 0.5, 100, 103, True)
    sql = (
        "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, "
        "is_buyer_maker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    )
    with psycopg.connect(db_url) as conn:
        day_partitions(conn, "agg_trades", row[2])
        conn.execute(sql, row)
        conn.execute(sql, row)
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone() == (1,)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(sql.replace(" ON CONFLICT DO NOTHING", ""), row)


def test_upgrade_twice_is_a_noop_and_downgrade_removes_everything(empty_db: str) -> None:
    before = catalog_snapshot(empty_db)
    migrate.upgrade(empty_db)
    once = catalog_snapshot(empty_db)
    migrate.upgrade(empty_db)
    assert catalog_snapshot(empty_db) == once
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(migrate.alembic_config(empty_db)).get_heads()
    assert [tuple(heads)] == once["alembic"]  # the head revision, whatever its number after re-chaining
    assert {name for name, _ in once["functions"]} >= {"time_bucket", "first", "last"}
    migrate.downgrade(empty_db)
    after = catalog_snapshot(empty_db)
    # Only alembic's own bookkeeping table may remain (empty).
    assert [r for r in after["relations"] if not r[0].startswith("alembic_version")] == before["relations"]
    assert after["functions"] == before["functions"] == []
    assert after["types"] == before["types"]
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (0,)
    # And back up again from nothing.
    migrate.upgrade(empty_db)
    assert catalog_snapshot(empty_db) == once


BANDS = [-5.0, -1.0, -0.2, 0.2, 1.0, 5.0]


def test_0005_stores_book_depth_bands_exactly_and_converts_existing_rows(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0004")
    insert = (
        "INSERT INTO book_depth_bands (symbol, ts, percentage, depth, notional) "
        "SELECT 'BTCUSDT', '2026-03-05 00:00:07+00'::timestamptz + k * interval '30 s', p, 1.5, 2.5 "
        "FROM generate_series(0, 3) k, unnest(%s::real[]) p"
    )
    with psycopg.connect(empty_db) as conn:
        conn.execute(insert, (BANDS,))
        assert conn.execute("SELECT count(*) FROM book_depth_bands WHERE percentage = 0.2").fetchone() == (0,)
    migrate.upgrade(empty_db)  # 0005: converted in place
    with psycopg.connect(empty_db) as conn:
        assert conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'book_depth_bands'::regclass AND attname = 'percentage'"
        ).fetchone() == ("numeric(5,2)",)
        got = conn.execute(
            "SELECT p::text AS t FROM (SELECT DISTINCT percentage AS p FROM book_depth_bands) s ORDER BY s.p"
        ).fetchall()
        assert [g[0] for g in got] == ["-5.00", "-1.00", "-0.20", "0.20", "1.00", "5.00"]
        assert conn.execute("SELECT count(*) FROM book_depth_bands WHERE percentage = 0.2").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM book_depth_bands").fetchone() == (24,)
        comment = conn.execute("SELECT col_description('futures_metrics'::regclass, 2)").fetchone()[0]
        assert "create_time" in comment and "#491" in comment and "not shifted" in comment
    migrate.downgrade(empty_db, "0004")
    with psycopg.connect(empty_db) as conn:
        assert conn.execute(
            "SELECT format_type(atttypid, 0) FROM pg_attribute "
            "WHERE attrelid = 'book_depth_bands'::regclass AND attname = 'percentage'"
        ).fetchone() == ("real",)
        assert conn.execute(
            "SELECT count(*) FROM book_depth_bands WHERE percentage = 0.2::real"
        ).fetchone() == (4,)
        assert conn.execute("SELECT col_description('futures_metrics'::regclass, 2)").fetchone() == (None,)
