"""book_depth_bands.percentage exactly: numeric(5,2) instead of real.

The bookDepth archives moved from integer bands (-5..5) to "-5.00" style with +-0.20 in 2026; as
`real`, 0.20 reads back as 0.200000003 and `WHERE percentage = 0.2` finds nothing. Existing rows
are converted in place (round(percentage::numeric, 2): every band Binance publishes has at most two
decimals). On TimescaleDB with compression a column type cannot change while the columnstore is
enabled, so the compression policy is taken off, compressed chunks are decompressed, compression is
switched off, the type changed, and compression, its settings (segment by / order by as they were),
its policy (compress_after as it was) and the chunks that were compressed are put back.

A feature layer whose stages read book_depth_bands (the book-depth band stages, built by 0004 from
the code that runs it) depends on the column, which PostgreSQL then refuses to retype: that layer is
dropped before the change and built again after it (its watermarks cleared, its history logged,
as features_sql/layer.py rebuilds a changed layer).

Also documents, as column comments, the time convention of the metrics archives (futures_metrics.ts
and open_interest.ts of source 'metrics'): create_time exactly as the archive publishes it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

from alembic import op

from microstructure.db.tables import TIME_TABLES
from microstructure.features_sql import layer
from microstructure.features_sql.schema import PolicySettings, layer_create_sql, layer_drop_sql
from microstructure.features_sql.stages import STAGES

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "book_depth_bands"
LAYOUT = next(t for t in TIME_TABLES if t.name == TABLE)

PERCENTAGE_COMMENT = (
    "band edge in percent from mid, exactly as the archive writes it: -5..-1 / 1..5 (10 bands before "
    "2026), -5.00 .. -0.20 / 0.20 .. 5.00 (12 bands from 2026); negative = bids"
)
METRICS_TS_COMMENT = (
    "create_time of the data.binance.vision metrics archive, stored as published (not shifted). Binance "
    "documents the /futures/data/* timestamp as the end of the 5-minute period; binance-public-data "
    "issue #491 (open, not confirmed by Binance) reports that the UM metrics archives label the start "
    "of the period from 2026-06-25 00:00 UTC on (daily files 00:00..23:55 instead of 00:05..00:00), "
    "which would make 2026-06-24 and 2026-06-25 both hold a 2026-06-25 00:00 row (the first loaded is "
    "kept). Not converted until that is confirmed: compare rows on both sides of 2026-06-25 with care."
)
OI_TS_COMMENT = (
    "observation time: the poll's server time (rest), the period timestamp of openInterestHist (hist), "
    "or the metrics archive's create_time as published (metrics: see futures_metrics.ts)"
)


def _compression(conn: Any) -> dict[str, Any] | None:
    """The compression set-up of book_depth_bands when it is a hypertable with compression enabled."""
    if not conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        return None
    row = conn.exec_driver_sql(
        "SELECT compression_enabled FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = current_schema() AND hypertable_name = %(t)s",
        {"t": TABLE},
    ).fetchone()
    if row is None or not row[0]:
        return None
    settings = conn.exec_driver_sql(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc, orderby_nullsfirst "
        "FROM timescaledb_information.compression_settings "
        "WHERE hypertable_schema = current_schema() AND hypertable_name = %(t)s",
        {"t": TABLE},
    ).fetchall()
    segment = [r[0] for r in sorted((r for r in settings if r[1] is not None), key=lambda r: r[1])]
    order = [
        r[0] + ((" NULLS FIRST" if r[4] else "") if r[3] else (" DESC" if r[4] else " DESC NULLS LAST"))
        for r in sorted((r for r in settings if r[2] is not None), key=lambda r: r[2])
    ]
    policy = conn.exec_driver_sql(
        "SELECT config->>'compress_after' FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' AND hypertable_schema = current_schema() "
        "AND hypertable_name = %(t)s",
        {"t": TABLE},
    ).fetchone()
    chunks = [
        r[0]
        for r in conn.exec_driver_sql(
            "SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = %(t)s AND is_compressed",
            {"t": TABLE},
        ).fetchall()
    ]
    return {
        "segment_by": ", ".join(segment) or LAYOUT.segment_by,
        "order_by": ", ".join(order) or LAYOUT.order_by,
        "compress_after": policy[0] if policy is not None else None,
        "chunks": chunks,
    }


def _dependent_layer(conn: Any) -> bool | None:
    """The feature layer's engine (True: continuous aggregates) when one of its stages reads
    book_depth_bands, else None."""
    names = [s.name for s in STAGES if s.raw_table == TABLE]
    engine = conn.exec_driver_sql("SELECT value FROM microstructure_meta WHERE key = 'features'").fetchone()
    if engine is None or not names:
        return None
    found = conn.exec_driver_sql("SELECT to_regclass(%(n)s)", {"n": names[0]}).fetchone()
    return None if found[0] is None else engine[0] == "continuous_aggregates"


def _alter_percentage(new_type: str, using: str) -> None:
    conn = op.get_bind()
    caggs = _dependent_layer(conn)
    if caggs is not None:
        for statement in layer_drop_sql(caggs):
            op.execute(statement)
    _alter_column(conn, new_type, using)
    if caggs is not None:
        for statement in layer_create_sql(caggs, PolicySettings() if caggs else None):
            op.execute(statement)
        op.execute("DELETE FROM feature_watermarks")
        layer.log_whole_history(conn)
        layer.record(conn, caggs)


def _alter_column(conn: Any, new_type: str, using: str) -> None:
    comp = _compression(conn)
    if comp is not None:
        op.execute(f"SELECT remove_compression_policy('{TABLE}', if_exists => true)")
        for chunk in comp["chunks"]:
            op.execute(f"SELECT decompress_chunk('{chunk}')")
        op.execute(f"ALTER TABLE {TABLE} SET (timescaledb.compress = false)")
    op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN percentage TYPE {new_type} USING {using}")
    if comp is not None:
        op.execute(
            f"ALTER TABLE {TABLE} SET (timescaledb.compress, "
            f"timescaledb.compress_segmentby = '{comp['segment_by']}', "
            f"timescaledb.compress_orderby = '{comp['order_by']}')"
        )
        if comp["compress_after"] is not None:
            op.execute(f"SELECT add_compression_policy('{TABLE}', INTERVAL '{comp['compress_after']}')")
        for chunk in comp["chunks"]:
            op.execute(f"SELECT compress_chunk('{chunk}')")


def _comment(column: str, text: str | None) -> None:
    value = "NULL" if text is None else "'" + text.replace("'", "''") + "'"
    op.execute(f"COMMENT ON COLUMN {column} IS {value}")


def upgrade() -> None:
    _alter_percentage("numeric(5,2)", "round(percentage::numeric, 2)")
    _comment(f"{TABLE}.percentage", PERCENTAGE_COMMENT)
    _comment("futures_metrics.ts", METRICS_TS_COMMENT)
    _comment("open_interest.ts", OI_TS_COMMENT)


def downgrade() -> None:
    _alter_percentage("real", "percentage::real")
    _comment(f"{TABLE}.percentage", None)
    _comment("futures_metrics.ts", None)
    _comment("open_interest.ts", None)
