"""Features: the invalidation log, the feature stages and the features_1m / _5m / _15m views.

Where TimescaleDB has continuous aggregates (community licence) every stage is a continuous
aggregate with a refresh policy and columnstore; on plain PostgreSQL and Apache-only TimescaleDB
it is a table the incremental refresher keeps. The engine is the one revision 0001 recorded
(MICROSTRUCTURE_ENGINE may have narrowed it). The stage SELECTs and the view come from
microstructure/features_sql/ as they are when this revision runs; a later change of them comes
with no revision: every upgrade compares the layer's recorded fingerprint with the code's and
rebuilds it when they differ (features_sql/layer.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from microstructure.features_sql import layer
from microstructure.features_sql.schema import PolicySettings, create_sql, drop_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _continuous_aggregates() -> bool:
    row = (
        op.get_bind().exec_driver_sql("SELECT value FROM microstructure_meta WHERE key = 'engine'").fetchone()
    )
    return row is not None and row[0] == "timescaledb"


def upgrade() -> None:
    caggs = _continuous_aggregates()
    policy = PolicySettings() if caggs else None
    for statement in create_sql(caggs, policy):
        op.execute(statement)
    op.get_bind().exec_driver_sql(
        "INSERT INTO microstructure_meta (key, value) VALUES ('features', %(v)s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        {"v": "continuous_aggregates" if caggs else "refresher"},
    )
    layer.record(op.get_bind(), caggs)  # a later `db upgrade` rebuilds the layer when its SQL changes


def downgrade() -> None:
    for statement in drop_sql(_continuous_aggregates()):
        op.execute(statement)
    op.execute(
        "DELETE FROM microstructure_meta WHERE key IN ('features', 'features_fingerprint', 'features_stages')"
    )
