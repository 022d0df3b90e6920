"""Compat SQL functions on plain PostgreSQL: time_bucket, first, last as TimescaleDB has them.

The feature SELECTs in features_sql/ are the single source of truth on every engine; on plain
PostgreSQL these functions give them the few TimescaleDB names they use. They behave like
TimescaleDB's for this project's uses:

- time_bucket(interval, timestamptz|timestamp): buckets aligned to TimescaleDB's default origin,
  Monday 2000-01-03 00:00 UTC (so minute, hour and day buckets fall on clock boundaries); widths in
  months are not supported (date_bin refuses them), nor needed here.
- time_bucket(bigint|integer, bigint|integer): floor to a multiple of the width, negatives included.
- first(value, time) / last(value, time): the value at the smallest / largest non-NULL time; ties
  keep the row seen first. Overloads for the value and time types this project aggregates.

Where the timescaledb extension is installed nothing is created: it provides the real functions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIME_BUCKET_SQL = """
CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN date_bin(bucket_width, ts, timestamptz '2000-01-03 00:00:00+00');
CREATE FUNCTION time_bucket(bucket_width interval, ts timestamp) RETURNS timestamp
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN date_bin(bucket_width, ts, timestamp '2000-01-03 00:00:00');
CREATE FUNCTION time_bucket(bucket_width bigint, ts bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ts - (((ts % bucket_width) + bucket_width) % bucket_width);
CREATE FUNCTION time_bucket(bucket_width integer, ts integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ts - (((ts % bucket_width) + bucket_width) % bucket_width);
"""

VALUE_TYPES = {"f8": "double precision", "i8": "bigint", "num": "numeric", "txt": "text", "bool": "boolean"}
TIME_TYPES = {"tstz": "timestamptz", "i8": "bigint"}


def _first_last_sql() -> str:
    parts = []
    for vk, vt in VALUE_TYPES.items():
        for tk, tt in TIME_TYPES.items():
            state = f"_ms_fl_{vk}_{tk}"
            parts.append(
                f"""
CREATE TYPE {state} AS (v {vt}, t {tt});
CREATE FUNCTION {state}_value(s {state}) RETURNS {vt}
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (s).v;
"""
            )
            for name, cmp in (("first", "<"), ("last", ">")):
                parts.append(
                    f"""
CREATE FUNCTION {state}_{name}_step(s {state}, v {vt}, t {tt}) RETURNS {state}
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN t IS NULL THEN s
                WHEN s IS NULL OR t {cmp} (s).t THEN ROW(v, t)::{state}
                ELSE s END;
CREATE FUNCTION {state}_{name}_combine(a {state}, b {state}) RETURNS {state}
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN b IS NULL THEN a WHEN a IS NULL THEN b
                WHEN (b).t {cmp} (a).t THEN b ELSE a END;
CREATE AGGREGATE {name}({vt}, {tt}) (
    SFUNC = {state}_{name}_step, STYPE = {state},
    COMBINEFUNC = {state}_{name}_combine, FINALFUNC = {state}_value, PARALLEL = SAFE
);
"""
                )
    return "\n".join(parts)


def _drop_first_last_sql() -> str:
    parts = []
    for vt in VALUE_TYPES.values():
        for tt in TIME_TYPES.values():
            parts.append(f"DROP AGGREGATE IF EXISTS first({vt}, {tt});")
            parts.append(f"DROP AGGREGATE IF EXISTS last({vt}, {tt});")
    for vk in VALUE_TYPES:
        for tk in TIME_TYPES:
            parts.append(f"DROP TYPE IF EXISTS _ms_fl_{vk}_{tk} CASCADE;")
    return "\n".join(parts)


DROP_TIME_BUCKET_SQL = """
DROP FUNCTION IF EXISTS time_bucket(interval, timestamptz);
DROP FUNCTION IF EXISTS time_bucket(interval, timestamp);
DROP FUNCTION IF EXISTS time_bucket(bigint, bigint);
DROP FUNCTION IF EXISTS time_bucket(integer, integer);
"""


def _timescaledb_installed() -> bool:
    row = op.get_bind().exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def _ours_installed() -> bool:
    row = op.get_bind().exec_driver_sql("SELECT to_regtype('_ms_fl_f8_tstz')").fetchone()
    return row is not None and row[0] is not None


def upgrade() -> None:
    # Whatever engine the tables were built for (MICROSTRUCTURE_ENGINE=postgresql may force plain
    # tables on a TimescaleDB server), the extension's own functions win where it is installed.
    if _timescaledb_installed():
        return
    op.execute(TIME_BUCKET_SQL)
    op.execute(_first_last_sql())


def downgrade() -> None:
    if not _ours_installed():
        return
    op.execute(_drop_first_last_sql())
    op.execute(DROP_TIME_BUCKET_SQL)
