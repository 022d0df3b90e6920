"""Day partitions on plain PostgreSQL (revision 0006): the conversion of a database with rows in it,
its downgrade, and partitions made as rows arrive."""

from __future__ import annotations

import psycopg
import pytest

from microstructure.db import migrate

AGG_ROWS = (
    "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker) "
    "SELECT s, k, '2026-11-28 00:00:00+00'::timestamptz + k * interval '97 s', 100 + k, 1, k * 3, k * 3 + 2, k % 2 = 0 "
    "FROM generate_series(1, 4000) k, unnest(ARRAY['BTCUSDT', 'ETHUSDT']) s"
)  # 4000 x 97 s: 2026-11-28 .. 2026-12-02, five UTC days
BOOK_ROWS = (
    "INSERT INTO book_snapshots (symbol, ts, event_ts, last_update_id, bid_px, bid_qty, ask_px, ask_qty, mid) "
    "SELECT 'BTCUSDT', '2026-11-30 23:58:00+00'::timestamptz + k * interval '500 ms', "
    "'2026-11-30 23:58:00+00'::timestamptz + k * interval '500 ms', k, ARRAY[99.5], ARRAY[1.0], ARRAY[100.5], "
    "ARRAY[2.0], 100 FROM generate_series(1, 480) k"
)  # 4 minutes across midnight: two days


def _fingerprint(conn: psycopg.Connection, table: str) -> tuple:
    return conn.execute(f"SELECT count(*), sum(hashtext(t::text)) FROM {table} t").fetchone()


def _partitions(conn: psycopg.Connection, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY 1",
            (table,),
        )
    ]


def _indexes(conn: psycopg.Connection, table: str) -> set[tuple[str, str]]:
    return {
        (name, body.split(" USING ", 1)[1])
        for name, body in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)
        )
    }


def test_0006_converts_a_database_with_rows_in_place_and_back(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0005")
    with psycopg.connect(empty_db) as conn:
        conn.execute(AGG_ROWS)
        conn.execute(BOOK_ROWS)
        before = {t: _fingerprint(conn, t) for t in ("agg_trades", "book_snapshots")}
        indexes = {t: _indexes(conn, t) for t in ("agg_trades", "book_snapshots")}
        comment = conn.execute("SELECT obj_description('agg_trades'::regclass, 'pg_class')").fetchone()
    assert before["agg_trades"][0] == 8000 and before["book_snapshots"][0] == 480
    migrate.upgrade(empty_db)
    with psycopg.connect(empty_db) as conn:
        kinds = dict(
            conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relname IN ('agg_trades', 'book_snapshots')"
            )
        )
        assert kinds == {"agg_trades": "p", "book_snapshots": "p"}
        assert _partitions(conn, "agg_trades") == [f"agg_trades_p202611{d}" for d in (28, 29, 30)] + [
            "agg_trades_p20261201",
            "agg_trades_p20261202",
        ]
        assert _partitions(conn, "book_snapshots") == ["book_snapshots_p20261130", "book_snapshots_p20261201"]
        assert {t: _fingerprint(conn, t) for t in before} == before  # the same rows
        assert {t: _indexes(conn, t) for t in indexes} == indexes  # the same index names and columns
        assert (
            conn.execute("SELECT obj_description('agg_trades'::regclass, 'pg_class')").fetchone() == comment
        )
        # each row sits in its own UTC day's partition
        assert conn.execute(
            "SELECT count(*) FROM agg_trades_p20261129 WHERE ts < '2026-11-29' OR ts >= '2026-11-30'"
        ).fetchone() == (0,)
        # keys still refuse a second copy; a time range scan reads only that day's partition
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(AGG_ROWS.replace("generate_series(1, 4000)", "generate_series(7, 7)"))
        conn.rollback()
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT count(*) FROM agg_trades WHERE symbol = 'BTCUSDT' "
                "AND ts >= '2026-11-29' AND ts < '2026-11-30'"
            )
        )
        assert "agg_trades_p20261129" in plan and "agg_trades_p20261130" not in plan, plan
    migrate.downgrade(empty_db, "0005")
    with psycopg.connect(empty_db) as conn:
        kinds = dict(
            conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relname IN ('agg_trades', 'book_snapshots')"
            )
        )
        assert kinds == {"agg_trades": "r", "book_snapshots": "r"}
        assert {t: _fingerprint(conn, t) for t in before} == before
        assert {t: _indexes(conn, t) for t in indexes} == indexes
        assert (
            conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname ~ '_p2[0-9]{7}|partitioned'"
            ).fetchall()
            == []
        )
        assert conn.execute("SELECT to_regproc('microstructure_ensure_day_partitions')").fetchone() == (None,)
    migrate.upgrade(empty_db)  # and forward again
    with psycopg.connect(empty_db) as conn:
        assert {t: _fingerprint(conn, t) for t in before} == before


def test_partitions_are_made_as_rows_arrive_once_each(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        made = conn.execute(
            "SELECT microstructure_ensure_day_partitions('agg_trades', '2026-12-01 23:00+00', '2026-12-03 01:00+00')"
        ).fetchone()
        assert made == (3,)
        again = conn.execute(
            "SELECT microstructure_ensure_day_partitions('agg_trades', '2026-12-02 00:00+00', '2026-12-02 23:59+00')"
        ).fetchone()
        assert again == (0,)
        assert _partitions(conn, "agg_trades") == [
            "agg_trades_p20261201",
            "agg_trades_p20261202",
            "agg_trades_p20261203",
        ]
        assert _indexes(conn, "agg_trades_p20261202") == {
            ("agg_trades_p20261202_pkey", "btree (symbol, agg_id, ts)"),
            ("agg_trades_p20261202_symbol_ts_idx", "btree (symbol, ts)"),
        }
        # a row of a day without a partition is refused, not lost silently
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
            conn.execute(AGG_ROWS.replace("generate_series(1, 4000)", "generate_series(1, 1)"))
        # not partitioned: nothing to do
        assert conn.execute(
            "SELECT microstructure_ensure_day_partitions('mark_prices', now(), now())"
        ).fetchone() == (0,)


def test_db_schema_shows_a_partitioned_table_once_with_its_days_and_rows(empty_db: str) -> None:
    migrate.upgrade(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "SELECT microstructure_ensure_day_partitions('agg_trades', '2026-11-28', '2026-12-02 12:00')"
        )
        conn.execute(AGG_ROWS)
        conn.execute("ANALYZE agg_trades")
    tables = {t.name: t for t in migrate.summarize(empty_db).tables}
    assert not any(name.startswith("agg_trades_p2") for name in tables)
    assert (
        tables["agg_trades"].kind == "partitioned (5 days)" and tables["agg_trades"].chunk_interval == "1 day"
    )
    assert tables["agg_trades"].rows_estimate == 8000
    assert tables["book_snapshots"].kind == "partitioned (0 days)" and tables["mark_prices"].kind == "table"
