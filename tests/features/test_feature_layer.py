"""A database whose feature layer is older than the code is rebuilt by `db upgrade` (every writer runs
it): old stages dropped, the current layer created, the whole history queued for the refresher, and
the refreshed features equal the pandas reference again. A current layer is left alone."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fx_cases import write_cases
from fx_helpers import copy_raw_rows, run
from test_features_cases import assert_equal_reference, check_edge_rules, refresh, refresh_all

from microstructure.db import migrate
from microstructure.features_sql import layer
from microstructure.features_sql.stages import LAYER_TABLE, RAW_TABLES


def _age(dsn: str) -> None:
    """Make the database look like one a release before fingerprints built: no fingerprint, a stage
    the code no longer has, a view of another shape, a stage whose rows are stale."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM microstructure_meta WHERE key IN ('features_fingerprint', 'features_stages')"
        )
        conn.execute("CREATE TABLE trade_counts_1s (symbol text, bucket timestamptz)")
        conn.execute("DROP VIEW features_1m")
        conn.execute("CREATE VIEW features_1m AS SELECT 1 AS old_column")


def _logged(dsn: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(the feature_layer invalidations, each symbol's first and last raw row over the stages' tables)"""
    with psycopg.connect(dsn) as conn:
        got = conn.execute(
            "SELECT table_name, symbol, lo, hi FROM raw_invalidations WHERE table_name = %s ORDER BY symbol",
            (LAYER_TABLE,),
        ).fetchall()
        union = " UNION ALL ".join(f"SELECT symbol, ts FROM {t}" for t in RAW_TABLES)
        want = conn.execute(
            f"SELECT %s, symbol, min(ts), max(ts) FROM ({union}) u GROUP BY symbol ORDER BY symbol",
            (LAYER_TABLE,),
        ).fetchall()
    return got, want


def test_an_old_feature_layer_is_rebuilt_and_refreshed_on_postgresql(db_url: str) -> None:
    run(write_cases(db_url))
    refresh(db_url)
    assert not migrate.ensure_feature_layer(db_url)  # current: left alone
    _age(db_url)

    migrate.upgrade(db_url)

    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regclass('trade_counts_1s')").fetchone() == (None,)
        meta = dict(conn.execute("SELECT key, value FROM microstructure_meta").fetchall())
        assert meta[layer.FINGERPRINT_KEY] == layer.fingerprint(False)
        assert conn.execute("SELECT count(*) FROM feature_watermarks").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM trades_1m").fetchone() == (0,)  # rebuilt empty
    got, want = _logged(db_url)
    assert len(want) == 2 and got == want
    report = refresh(db_url)  # what the log asks for: the whole history
    assert report.rows_written > 0
    assert_equal_reference(db_url, db_url, "rebuilt postgresql")
    check_edge_rules(db_url)
    assert not migrate.ensure_feature_layer(db_url)
    assert refresh(db_url).windows == 0


@pytest.mark.pglite
def test_an_old_feature_layer_is_rebuilt_on_timescaledb_continuous_aggregates(
    db_url: str, pglite_db: str
) -> None:
    run(write_cases(db_url))
    copy_raw_rows(db_url, pglite_db)
    refresh_all(pglite_db, force=False)
    with psycopg.connect(pglite_db, autocommit=True) as conn:
        conn.execute("DELETE FROM microstructure_meta WHERE key = 'features_fingerprint'")

    assert migrate.ensure_feature_layer(pglite_db)

    with psycopg.connect(pglite_db) as conn:
        caggs = conn.execute(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates WHERE view_name = 'trades_1m'"
        ).fetchone()
        assert caggs == (1,)
        meta = dict(conn.execute("SELECT key, value FROM microstructure_meta").fetchall())
        assert meta[layer.FINGERPRINT_KEY] == layer.fingerprint(True)
    got, want = _logged(pglite_db)
    assert got == want
    refresh(pglite_db)
    assert_equal_reference(pglite_db, db_url, "rebuilt timescaledb")
    assert not migrate.ensure_feature_layer(pglite_db)
