"""Reconciliation with Binance's daily archives: which stored days the archive verified, and the rows
it displaced.

- agg_trade_coverage.verified_sha256 / verified_at: the sha256 of the aggTrades archive the day's
  stored rows were last reconciled with (NULL: never verified). A SQL reader asks
  `verified_sha256 IS NOT NULL` for "this (symbol, day) is the archive's record".
- archive_verified (dataset, symbol, day): the same for every archive dataset the reconciler checks
  (aggTrades, bookDepth, metrics), with the archive's sha256 and what the reconciliation changed.
  A day whose archive is re-uploaded (its .CHECKSUM changed) is reconciled again and its row replaced.
- archive_displaced: stored aggregate-trade rows the archive contradicted, moved out of agg_trades
  (reason 'differs': the archive's version replaced it; 'not_in_archive': the archive of its day
  does not hold the id). Kept for audit; never read by the features.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
ALTER TABLE agg_trade_coverage ADD COLUMN verified_sha256 text, ADD COLUMN verified_at timestamptz;
COMMENT ON COLUMN agg_trade_coverage.verified_sha256 IS
    'sha256 of the aggTrades archive the day was last reconciled with (NULL: not verified)';

CREATE TABLE archive_verified (
    dataset     text        NOT NULL CHECK (dataset IN ('aggTrades', 'bookDepth', 'metrics')),
    symbol      text        NOT NULL,
    day         date        NOT NULL,
    sha256      text        NOT NULL,
    verified_at timestamptz NOT NULL DEFAULT now(),
    missing     bigint      NOT NULL DEFAULT 0,  -- archive rows the store lacked (inserted)
    differing   bigint      NOT NULL DEFAULT 0,  -- stored rows replaced by the archive's version
    extra       bigint      NOT NULL DEFAULT 0,  -- stored rows the archive does not hold (displaced)
    PRIMARY KEY (dataset, symbol, day)
);
COMMENT ON TABLE archive_verified IS
    'Days reconciled with their data.binance.vision archive (sha256 of the archive, what changed).';

CREATE TABLE archive_displaced (
    symbol         text             NOT NULL,
    agg_id         bigint           NOT NULL,
    ts             timestamptz      NOT NULL,
    price          double precision NOT NULL,
    quantity       double precision NOT NULL,
    first_trade_id bigint           NOT NULL,
    last_trade_id  bigint           NOT NULL,
    is_buyer_maker boolean          NOT NULL,
    recv_ts        timestamptz,
    reason         text             NOT NULL CHECK (reason IN ('differs', 'not_in_archive')),
    archive_sha256 text             NOT NULL,
    displaced_at   timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX archive_displaced_symbol_id ON archive_displaced (symbol, agg_id);
COMMENT ON TABLE archive_displaced IS
    'Stored aggregate trades the archive contradicted, moved out of agg_trades by reconcile (audit).';
"""

DOWNGRADE_SQL = """
DROP TABLE IF EXISTS archive_displaced;
DROP TABLE IF EXISTS archive_verified;
ALTER TABLE agg_trade_coverage DROP COLUMN IF EXISTS verified_at, DROP COLUMN IF EXISTS verified_sha256;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
