"""Migrations on TimescaleDB with the community module (PGlite; the real image where Docker runs):
hypertables with the chosen chunk intervals, compression settings and policies, checked through
TimescaleDB's information views; upgrade twice is a no-op; downgrade removes everything of ours."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from schema_catalog import catalog_snapshot

from microstructure.db import migrate
from microstructure.db.tables import TIME_TABLES
from microstructure.features_sql.stages import STAGES


def _interval(text: str) -> timedelta:
    n, unit = text.split()
    return timedelta(days=int(n)) if unit.startswith("day") else timedelta(hours=int(n))


@pytest.fixture
def migrated(timescale_url: str) -> Iterator[str]:
    migrate.downgrade(timescale_url)  # a shared server: start from nothing
    migrate.upgrade(timescale_url)
    yield timescale_url
    migrate.downgrade(timescale_url)


def test_hypertables_chunk_intervals_and_compression(migrated: str) -> None:
    with psycopg.connect(migrated) as conn:
        assert conn.execute("SELECT value FROM microstructure_meta WHERE key = 'engine'").fetchone() == (
            "timescaledb",
        )
        hypertables = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = 'public'"
            )
        }
        assert set(hypertables) == {t.name for t in TIME_TABLES}
        assert all(hypertables.values()), hypertables
        dims = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_schema = 'public'"
            )
        }
        for t in TIME_TABLES:
            assert dims[t.name] == (t.time_column, _interval(t.chunk_interval)), t.name
        settings: dict[str, dict[str, list[str]]] = {}
        for table, column, seg_idx, ord_idx in conn.execute(
            "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index "
            "FROM timescaledb_information.compression_settings WHERE hypertable_schema = 'public' "
            "ORDER BY hypertable_name, segmentby_column_index NULLS LAST, orderby_column_index NULLS LAST"
        ):
            entry = settings.setdefault(table, {"segmentby": [], "orderby": []})
            if seg_idx is not None:
                entry["segmentby"].append(column)
            if ord_idx is not None:
                entry["orderby"].append(column)
        for t in TIME_TABLES:
            assert settings[t.name]["segmentby"] == [c.strip() for c in t.segment_by.split(",")], t.name
            assert settings[t.name]["orderby"] == [c.strip() for c in t.order_by.split(",")], t.name
        jobs = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT hypertable_name, config->>'compress_after' FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_compression' AND hypertable_schema = 'public'"
            )
        }
        # the raw hypertables' policies, and the feature stages' (continuous aggregates) columnstore
        assert set(jobs) == {t.name for t in TIME_TABLES} | {s.name for s in STAGES}
        # No compat functions of ours: TimescaleDB provides time_bucket/first/last itself.
        assert conn.execute("SELECT to_regtype('_ms_fl_f8_tstz')").fetchone() == (None,)


def test_writes_are_idempotent_and_timescaledb_functions_answer(migrated: str) -> None:
    sql = (
        "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker) "
        "VALUES ('BTCUSDT', %s, to_timestamp(%s / 1000.0), %s, 1, %s, %s, false) ON CONFLICT DO NOTHING"
    )
    rows = [(i, 1_700_000_000_000 + i * 7_000, 100.0 + i, i, i) for i in range(1, 21)]
    with psycopg.connect(migrated) as conn:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)
            cur.executemany(sql, rows)
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone() == (20,)
        buckets = conn.execute(
            "SELECT time_bucket('1 minute', ts) b, first(price, agg_id), last(price, agg_id), count(*) "
            "FROM agg_trades GROUP BY b ORDER BY b"
        ).fetchall()
        assert sum(b[3] for b in buckets) == 20
        assert buckets[0][1] == 101.0 and buckets[-1][2] == 120.0
        chunks = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'agg_trades'"
        )
        assert chunks.fetchone()[0] >= 1


def test_upgrade_twice_is_a_noop_and_downgrade_removes_everything(timescale_url: str) -> None:
    migrate.downgrade(timescale_url)
    before = catalog_snapshot(timescale_url)
    migrate.upgrade(timescale_url)
    once = catalog_snapshot(timescale_url)
    migrate.upgrade(timescale_url)
    assert catalog_snapshot(timescale_url) == once
    assert once["alembic"] == [("0009",)]
    migrate.downgrade(timescale_url)
    after = catalog_snapshot(timescale_url)
    assert [r for r in after["relations"] if not r[0].startswith("alembic_version")] == [
        r for r in before["relations"] if not r[0].startswith("alembic_version")
    ]
    assert after["functions"] == before["functions"]
    assert after["types"] == before["types"]
    with psycopg.connect(timescale_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'"
        ).fetchone()
        assert left == (0,)
        assert conn.execute(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = 'public'"
        ).fetchone() == (0,)


def test_apache_only_engine_gets_hypertables_without_compression(pglite_url: str) -> None:
    """An Apache-only build cannot be started here (the licence is fixed per server), so the same
    code path is taken on PGlite through the engine override and checked for real."""
    migrate.downgrade(pglite_url)
    migrate.upgrade(pglite_url, engine="timescaledb-apache")
    try:
        with psycopg.connect(pglite_url) as conn:
            assert conn.execute("SELECT value FROM microstructure_meta WHERE key = 'engine'").fetchone() == (
                "timescaledb-apache",
            )
            rows = conn.execute(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = 'public'"
            ).fetchall()
            assert {r[0] for r in rows} == {t.name for t in TIME_TABLES}
            assert not any(r[1] for r in rows)
            jobs = conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = 'public'"
            ).fetchone()
            assert jobs == (0,)
    finally:
        migrate.downgrade(pglite_url)


def test_engine_override_postgresql_builds_plain_tables_on_timescaledb(pglite_url: str) -> None:
    migrate.downgrade(pglite_url)
    migrate.upgrade(pglite_url, engine="postgresql")
    try:
        with psycopg.connect(pglite_url) as conn:
            assert conn.execute("SELECT value FROM microstructure_meta WHERE key = 'engine'").fetchone() == (
                "postgresql",
            )
            assert conn.execute(
                "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'"
            ).fetchone() == (0,)
            # The extension's own time_bucket answers; no compat overloads were added beside it.
            assert conn.execute("SELECT to_regtype('_ms_fl_f8_tstz')").fetchone() == (None,)
            got = conn.execute(
                "SELECT time_bucket('5 minutes'::interval, '2024-01-01 10:07+00'::timestamptz)"
            )
            assert str(got.fetchone()[0]).startswith("2024-01-01 10:05")
    finally:
        migrate.downgrade(pglite_url)


def test_migrations_give_no_warnings_and_db_schema_tells_the_truth(
    pglite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On TimescaleDB with continuous aggregates: no server WARNING during the migrations (the notices
    are captured), `db schema` estimates hypertable rows with approximate_row_count() and lists no
    compat function (TimescaleDB's own time_bucket/first/last are not ours)."""
    migrate.downgrade(pglite_url)
    with caplog.at_level(logging.DEBUG, logger="microstructure.db.migrations"):
        migrate.upgrade(pglite_url)
    notices = [r.getMessage() for r in caplog.records if r.name == "microstructure.db.migrations"]
    assert notices, "the notice handler saw nothing: it is not attached"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], notices
    try:
        with psycopg.connect(pglite_url) as conn:
            conn.execute(
                "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker) "
                "SELECT 'BTCUSDT', g, to_timestamp(1700000000 + g), 100, 1, g, g, false FROM generate_series(1, 5000) g"
            )
            conn.commit()
            conn.execute("ANALYZE agg_trades")
        summary = migrate.summarize(pglite_url)
        tables = {t.name: t for t in summary.tables}
        assert tables["agg_trades"].kind == "hypertable" and tables["agg_trades"].rows_estimate > 0
        assert summary.functions == []
    finally:
        migrate.downgrade(pglite_url)


def _compression_state(conn: psycopg.Connection) -> tuple[list, list, list]:
    settings = conn.execute(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
        "FROM timescaledb_information.compression_settings WHERE hypertable_name = 'book_depth_bands' ORDER BY 1"
    ).fetchall()
    jobs = conn.execute(
        "SELECT config->>'compress_after' FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' AND hypertable_name = 'book_depth_bands'"
    ).fetchall()
    chunks = conn.execute(
        "SELECT chunk_name, is_compressed FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'book_depth_bands' ORDER BY range_start"
    ).fetchall()
    return settings, jobs, chunks


def test_0005_converts_book_depth_bands_on_a_compressed_hypertable(pglite_url: str) -> None:
    """A column type cannot change while the columnstore is on: the migration takes compression off
    and puts it back as it was (settings, policy, the chunks that were compressed)."""
    migrate.downgrade(pglite_url)
    migrate.upgrade(pglite_url, "0004")
    try:
        with psycopg.connect(pglite_url, autocommit=True) as conn:
            for day in ("2026-01-05", "2026-03-05"):  # two chunks (7 days each)
                conn.execute(
                    "INSERT INTO book_depth_bands (symbol, ts, percentage, depth, notional) "
                    "SELECT 'BTCUSDT', %s::timestamptz + k * interval '30 s', p, 1.5, 2.5 "
                    "FROM generate_series(0, 3) k, unnest(ARRAY[-5, -0.2, 0.2, 5]::real[]) p",
                    (day,),
                )
            conn.execute(
                "SELECT compress_chunk(c) FROM show_chunks('book_depth_bands', older_than => '2026-02-01'::timestamptz) c"
            )
            before = _compression_state(conn)
            assert [c[1] for c in before[2]] == [True, False] and before[1] == [("14 days",)]
        migrate.upgrade(pglite_url)
        with psycopg.connect(pglite_url) as conn:
            assert _compression_state(conn) == before
            assert conn.execute(
                "SELECT count(*) FROM book_depth_bands WHERE percentage = 0.2"
            ).fetchone() == (8,)
            got = conn.execute(
                "SELECT p::text AS t FROM (SELECT DISTINCT percentage AS p FROM book_depth_bands) s ORDER BY s.p"
            ).fetchall()
            assert [g[0] for g in got] == ["-5.00", "-0.20", "0.20", "5.00"]
            assert conn.execute("SELECT count(*) FROM book_depth_bands").fetchone() == (32,)
        migrate.downgrade(pglite_url, "0004")
        with psycopg.connect(pglite_url) as conn:
            assert _compression_state(conn) == before
            assert conn.execute(
                "SELECT count(*) FROM book_depth_bands WHERE percentage = 0.2::real"
            ).fetchone() == (8,)
            assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = "
                                "'book_depth_bands' AND column_name = 'percentage'").fetchone() == ("real",)  # fmt: skip
    finally:
        migrate.downgrade(pglite_url)


def test_a_loaded_day_older_than_the_policy_horizon_is_compressed_on_load(migrated: str) -> None:
    """sink/bulk.compress_day, which the historical loader calls when every symbol of a run has
    finished an archive day: that day's chunk is compressed at once, a recent day's is not, and
    writes keep working on both."""
    import asyncio
    from datetime import UTC, datetime

    import asyncpg

    from microstructure.ingest.sink.bulk import compress_day

    today = datetime.now(UTC).date()
    old, recent = today - timedelta(days=30), today - timedelta(days=1)
    sql = (
        "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker) "
        "SELECT 'BTCUSDT', %s + k, %s::date + k * interval '10 minutes', 100 + k, 1, k, k, k %% 2 = 0 "
        "FROM generate_series(0, 143) k"
    )
    with psycopg.connect(migrated) as conn:
        conn.execute(sql, (1_000, old))
        conn.execute(sql, (50_000, recent))

    async def main() -> tuple[int, int, int]:
        conn = await asyncpg.connect(migrated)
        try:
            return (
                await compress_day(conn, "agg_trades", old),
                await compress_day(conn, "agg_trades", recent),
                await compress_day(conn, "agg_trades", old),  # already compressed: nothing more
            )
        finally:
            await conn.close()

    assert asyncio.run(main()) == (1, 0, 0)
    with psycopg.connect(migrated) as conn:
        chunks = dict(
            conn.execute(
                "SELECT range_start::date, is_compressed FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'agg_trades'"
            ).fetchall()
        )
        assert chunks == {old: True, recent: False}
        # the loaded rows read back the same, and a live-style write still lands (and is a no-op twice)
        assert conn.execute(
            "SELECT count(*), sum(agg_id) FROM agg_trades WHERE ts < %s", (recent,)
        ).fetchone() == (144, sum(range(1_000, 1_144)))
        conn.execute(
            sql.replace("generate_series(0, 143)", "generate_series(144, 144)") + " ON CONFLICT DO NOTHING",
            (50_000, recent),
        )
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone() == (289,)
