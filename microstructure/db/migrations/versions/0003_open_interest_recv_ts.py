"""open_interest.recv_ts: the local receive time of a live /fapi/v1/openInterest poll, as the other
live tables carry it (NULL for rows from the metrics archives and openInterestHist).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE open_interest ADD COLUMN IF NOT EXISTS recv_ts timestamptz")
    op.execute(
        "COMMENT ON COLUMN open_interest.recv_ts IS 'local receive time of a live REST poll (NULL from archives)'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE open_interest DROP COLUMN IF EXISTS recv_ts")
