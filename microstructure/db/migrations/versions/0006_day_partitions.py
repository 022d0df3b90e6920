"""Day partitions for the big raw tables on plain PostgreSQL, and the functions that manage them.

On plain PostgreSQL `agg_trades` and `book_snapshots` (millions of rows a day) become range-partitioned
by UTC day on `ts`, one partition a day named `<table>_pYYYYMMDD`, created as data arrives (no
extension needed; no default partition, so attaching a day never scans another). Keys and index
names stay as they were. On TimescaleDB the hypertables already have day chunks and stay as they
are; the functions answer "not partitioned" there.

The functions (also used by the writer, the bulk loader and retention):
- microstructure_day_partition_name(parent, day): `<parent>_pYYYYMMDD`;
- microstructure_partition_column(parent): the range key of a day-partitioned table, else NULL;
- microstructure_new_day_table(parent, day): a standalone table shaped like the parent, for one day
  (created in the caller's transaction, so COPY FREEZE works on it);
- microstructure_index_day_table(parent, day): the parent's keys and indexes, built on that table;
- microstructure_attach_day_table(parent, day): a CHECK matching the partition bound (so ATTACH
  skips its validation scan), then ATTACH PARTITION, which takes only SHARE UPDATE EXCLUSIVE on the
  parent: writers of other days are not blocked;
- microstructure_ensure_day_partitions(parent, from, to): every missing day of [from, to] created
  empty and attached (serialised per day by an advisory lock the bulk loader takes too).

An existing unpartitioned table is converted in place, a day at a time (fill, index, attach), keeping
its rows, names and comments; the downgrade turns it back into one plain table with the same rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DAY_PARTITIONED = (("agg_trades", "ts"), ("book_snapshots", "ts"))

# revision 0007 replaces this one; its downgrade puts this text back
INDEX_DAY_TABLE_SQL = r"""
CREATE OR REPLACE FUNCTION microstructure_index_day_table(p_parent text, p_day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := microstructure_day_partition_name(p_parent, p_day);
    r record;
BEGIN
    -- keys first (ATTACH matches a parent's key only to a key of the child), then plain indexes
    FOR r IN SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c
             WHERE c.conrelid = p_parent::regclass AND c.contype IN ('p', 'u') ORDER BY c.conname LOOP
        EXECUTE format('ALTER TABLE %I ADD %s', part, r.def);
    END LOOP;
    FOR r IN SELECT i.indisunique AS uniq, pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
             WHERE i.indrelid = p_parent::regclass
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
             ORDER BY i.indexrelid LOOP
        EXECUTE format('CREATE %sINDEX ON %I USING %s', CASE WHEN r.uniq THEN 'UNIQUE ' ELSE '' END,
                       part, split_part(r.def, ' USING ', 2));
    END LOOP;
END
$$;
"""

FUNCTIONS_SQL = (
    r"""
CREATE FUNCTION microstructure_day_partition_name(p_parent text, p_day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT p_parent || '_p' || to_char(p_day, 'YYYYMMDD') $$;

CREATE FUNCTION microstructure_partition_column(p_parent text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT a.attname::text
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = to_regclass(p_parent) AND pt.partstrat = 'r'
$$;

CREATE FUNCTION microstructure_new_day_table(p_parent text, p_day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := microstructure_day_partition_name(p_parent, p_day);
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                   part, p_parent);
    RETURN part;
END
$$;

"""
    + INDEX_DAY_TABLE_SQL
    + r"""
CREATE FUNCTION microstructure_attach_day_table(p_parent text, p_day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := microstructure_day_partition_name(p_parent, p_day);
    col text := microstructure_partition_column(p_parent);
    lo text := to_char(p_day, 'YYYY-MM-DD') || ' 00:00:00+00';
    hi text := to_char(p_day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
BEGIN
    IF col IS NULL THEN
        RAISE EXCEPTION '% is not partitioned by day', p_parent;
    END IF;
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L::timestamptz AND %I < %L::timestamptz)',
                   part, part || '_day', col, lo, col, hi);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', p_parent, part, lo, hi);
END
$$;

CREATE FUNCTION microstructure_ensure_day_partitions(p_parent text, p_from timestamptz, p_to timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    part text;
    made integer := 0;
BEGIN
    IF microstructure_partition_column(p_parent) IS NULL THEN
        RETURN 0;
    END IF;
    FOR d IN SELECT g::date FROM generate_series((p_from AT TIME ZONE 'UTC')::date,
                                                 (p_to AT TIME ZONE 'UTC')::date, interval '1 day') g LOOP
        part := microstructure_day_partition_name(p_parent, d);
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        PERFORM pg_advisory_xact_lock(hashtext('microstructure_partition:' || part));
        BEGIN
            PERFORM microstructure_new_day_table(p_parent, d);
            PERFORM microstructure_index_day_table(p_parent, d);
            PERFORM microstructure_attach_day_table(p_parent, d);
            made := made + 1;
        EXCEPTION WHEN duplicate_table THEN
            NULL;  -- another session made it while this one waited for the day's lock
        END;
    END LOOP;
    RETURN made;
END
$$;

CREATE FUNCTION microstructure_replace_table(p_table text, p_suffix text, p_partition_column text)
RETURNS text
LANGUAGE plpgsql AS $$
-- Move table p_table aside (renamed p_table || p_suffix, its indexes too) and create an empty p_table
-- of the same columns, defaults, checks and comments, range-partitioned on p_partition_column when
-- given. Its keys and indexes are remembered for microstructure_restore_keys. Returns the old name.
DECLARE
    old text := p_table || p_suffix;
    r record;
BEGIN
    EXECUTE format('ALTER TABLE %I RENAME TO %I', p_table, old);
    CREATE TEMP TABLE microstructure_old_indexes ON COMMIT DROP AS
        SELECT i.indexrelid::regclass::text AS name, c.conname::text AS con,
               pg_get_constraintdef(c.oid) AS condef, i.indisunique AS uniq,
               split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2) AS body
        FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
        WHERE i.indrelid = old::regclass;
    FOR r IN SELECT * FROM microstructure_old_indexes LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.name, left(r.name, 50) || p_suffix);
    END LOOP;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE '
                   'INCLUDING COMMENTS)', p_table, old)
            || CASE WHEN p_partition_column IS NULL THEN ''
                    ELSE format(' PARTITION BY RANGE (%I)', p_partition_column) END;
    EXECUTE format('COMMENT ON TABLE %I IS %L', p_table, obj_description(old::regclass, 'pg_class'));
    RETURN old;
END
$$;

CREATE FUNCTION microstructure_restore_keys(p_table text) RETURNS void
LANGUAGE plpgsql AS $$
-- The keys and indexes microstructure_replace_table remembered, under their old names, on p_table.
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM microstructure_old_indexes ORDER BY con IS NULL, name LOOP
        IF r.con IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', p_table, r.con, r.condef);
        ELSE
            EXECUTE format('CREATE %sINDEX %I ON %I USING %s', CASE WHEN r.uniq THEN 'UNIQUE ' ELSE '' END,
                           r.name, p_table, r.body);
        END IF;
    END LOOP;
    DROP TABLE microstructure_old_indexes;
END
$$;

CREATE FUNCTION microstructure_partition_by_day(p_table text, p_column text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    old text := microstructure_replace_table(p_table, '_unpartitioned', p_column);
    d date;
    days integer := 0;
BEGIN
    PERFORM microstructure_restore_keys(p_table);  -- on the parent first: each day's attach matches them
    FOR d IN EXECUTE format('SELECT DISTINCT (%I AT TIME ZONE ''UTC'')::date FROM %I ORDER BY 1', p_column, old)
    LOOP
        PERFORM microstructure_new_day_table(p_table, d);
        EXECUTE format('INSERT INTO %I SELECT * FROM %I WHERE %I >= %L::timestamptz AND %I < %L::timestamptz',
                       microstructure_day_partition_name(p_table, d), old,
                       p_column, to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00',
                       p_column, to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
        PERFORM microstructure_index_day_table(p_table, d);
        PERFORM microstructure_attach_day_table(p_table, d);
        days := days + 1;
    END LOOP;
    EXECUTE format('DROP TABLE %I', old);
    RETURN days;
END
$$;

CREATE FUNCTION microstructure_unpartition(p_table text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    old text := microstructure_replace_table(p_table, '_partitioned', NULL);
    n bigint;
BEGIN
    EXECUTE format('INSERT INTO %I SELECT * FROM %I', p_table, old);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM microstructure_restore_keys(p_table);  -- after the rows: one sorted build each
    EXECUTE format('DROP TABLE %I', old);  -- its partitions with it
    RETURN n;
END
$$;
"""
)

FUNCTIONS = (
    "microstructure_unpartition(text)",
    "microstructure_partition_by_day(text, text)",
    "microstructure_restore_keys(text)",
    "microstructure_replace_table(text, text, text)",
    "microstructure_ensure_day_partitions(text, timestamptz, timestamptz)",
    "microstructure_attach_day_table(text, date)",
    "microstructure_index_day_table(text, date)",
    "microstructure_new_day_table(text, date)",
    "microstructure_partition_column(text)",
    "microstructure_day_partition_name(text, date)",
)


def _plain_table(table: str) -> bool:
    """An ordinary table (not partitioned, not a TimescaleDB hypertable)."""
    conn = op.get_bind()
    if conn.exec_driver_sql(f"SELECT relkind FROM pg_class WHERE oid = '{table}'::regclass").scalar() != "r":
        return False
    catalog = conn.exec_driver_sql("SELECT to_regclass('_timescaledb_catalog.hypertable')").scalar()
    if catalog is None:
        return True
    return not conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable "
        "WHERE schema_name = current_schema() AND table_name = %(t)s)",
        {"t": table},
    ).scalar()


def upgrade() -> None:
    op.execute(FUNCTIONS_SQL)
    for table, column in DAY_PARTITIONED:
        if _plain_table(table):
            op.get_bind().exec_driver_sql(
                "SELECT microstructure_partition_by_day(%(t)s, %(c)s)", {"t": table, "c": column}
            )


def downgrade() -> None:
    conn = op.get_bind()
    for table, _column in DAY_PARTITIONED:
        if conn.exec_driver_sql("SELECT microstructure_partition_column(%(t)s)", {"t": table}).scalar():
            conn.exec_driver_sql("SELECT microstructure_unpartition(%(t)s)", {"t": table})
    for fn in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {fn}")
