"""Collector groups: one row per member of a `--group`, its heartbeat and the symbols it collects.

Members started with the same `--group NAME` against one database split their symbols between them
through this table (no other service): every member upserts its row and moves `heartbeat_at` to the
database's `now()` every third of its `--lease-timeout`; a member whose heartbeat is older than its
lease timeout is dead, and the live members' assignment (rendezvous hashing of every symbol over the
live members whose universe lists it, ingest/collectors/group.py) gives its symbols to the others.
`owned` is what the member collects at the moment (written with each heartbeat), so `microstructure
status` shows members, hosts, pids, symbols each and the symbols no live member collects.

The database's clock is the only clock compared, so members on machines whose clocks disagree still
agree on who is alive.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS collector_group_members (
            group_name      text        NOT NULL,
            member_id       text        NOT NULL,
            host            text        NOT NULL,
            pid             integer     NOT NULL,
            started_at      timestamptz NOT NULL DEFAULT now(),
            heartbeat_at    timestamptz NOT NULL DEFAULT now(),
            lease_timeout_s double precision NOT NULL,
            redundancy      integer     NOT NULL DEFAULT 1,
            universe        text[]      NOT NULL,
            owned           text[]      NOT NULL DEFAULT '{}',
            PRIMARY KEY (group_name, member_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS collector_group_members")
