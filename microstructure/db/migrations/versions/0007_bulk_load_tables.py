"""Bulk-loaded days get their indexes built side by side, in a schema of their own until attached.

The bulk loader (sink/bulk.py) used to fill, index and attach a day's table in one transaction, so
its key and its time index were built one after the other by one backend. Built on two connections
at once they take about 30 % less wall time on two cores (BENCHMARKS.md, "Bulk load"), but another
connection only sees a committed table. So a day's table is now filled (COPY FREEZE) and committed
in the schema `microstructure_load`, indexed there by as many connections as it has indexes, then
keyed, moved into the parent's schema and attached in a last transaction. A load killed midway
leaves at most an unattached table in `microstructure_load`, which no query of the parent sees and
which the next historical run (or the next load of that day) drops; the names in the parent's
schema are never taken by it.

- microstructure_day_index_ddl(parent, day, table): the statements that give `table` the parent's
  keys and indexes: `build` (a CREATE [UNIQUE] INDEX each, independent of one another) and, for a
  key, `finish` (ALTER TABLE ... ADD CONSTRAINT ... USING INDEX, after its build). The partition's
  index names are the ones revision 0006 gave: `<partition>_pkey` and PostgreSQL's own names for
  the rest. microstructure_index_day_table (revision 0006) now runs these statements too, so one
  definition builds a day's indexes on both paths;
- microstructure_new_load_table(parent, day, symbol): `microstructure_load.<partition>` shaped like
  the parent with the CHECK matching the day's bound (so COPY checks each row and ATTACH scans
  nothing) and `symbol` as its symbol column's default (so COPY need not send it), after dropping a
  table left there by a killed load;
- microstructure_attach_load_table(parent, day): the keys finished, the default dropped, the table
  moved into the parent's schema and attached;
- microstructure_drop_load_table(parent, day): what a failed load leaves behind, dropped;
- microstructure_drop_stale_load_tables(): every table in `microstructure_load` whose day lock no
  session holds (its loader is gone: it was killed, or its host died), dropped, and their names; a
  table whose loader is at work is kept. The historical collector calls it when it starts, so the
  disk a killed load took comes back without loading that day again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LOAD_SCHEMA = "microstructure_load"

UPGRADE_SQL = r"""
CREATE SCHEMA IF NOT EXISTS microstructure_load;
COMMENT ON SCHEMA microstructure_load IS
    'Day tables being bulk-loaded (sink/bulk.py) before they are attached; the next load of a day drops what a killed load left here.';

CREATE FUNCTION microstructure_day_index_ddl(p_parent text, p_day date, p_table regclass)
RETURNS TABLE (build text, finish text)
LANGUAGE sql STABLE AS $$
    -- keys first (ATTACH matches a parent's key only to a key of the child), then plain indexes
    SELECT format('CREATE %sINDEX %s ON %s USING %s',
                  CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
                  CASE WHEN c.contype IS NULL THEN '' ELSE quote_ident(k.name) END,
                  p_table, split_part(pg_get_indexdef(i.indexrelid), ' USING ', 2)),
           CASE WHEN c.contype IS NOT NULL THEN
               format('ALTER TABLE %s ADD CONSTRAINT %I %s USING INDEX %I', p_table, k.name,
                      CASE c.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, k.name)
           END
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    LEFT JOIN pg_constraint c
           ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u')
    CROSS JOIN LATERAL (
        SELECT left(microstructure_day_partition_name(p_parent, p_day)
                    || CASE WHEN c.contype = 'p' THEN '_pkey' ELSE '_' || c.conname END, 63) AS name
    ) k
    WHERE i.indrelid = p_parent::regclass
    ORDER BY c.contype IS NULL, c.conname, i.indexrelid
$$;

CREATE OR REPLACE FUNCTION microstructure_index_day_table(p_parent text, p_day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM microstructure_day_index_ddl(
                 p_parent, p_day, microstructure_day_partition_name(p_parent, p_day)::regclass) LOOP
        EXECUTE r.build;
        IF r.finish IS NOT NULL THEN
            EXECUTE r.finish;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION microstructure_drop_load_table(p_parent text, p_day date) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS microstructure_load.%I',
                   microstructure_day_partition_name(p_parent, p_day));
END
$$;

CREATE FUNCTION microstructure_drop_stale_load_tables() RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname::text AS name FROM pg_class c
             WHERE c.relnamespace = 'microstructure_load'::regnamespace AND c.relkind = 'r'
             ORDER BY 1 LOOP
        -- the table's name is its partition's: a loader holds that day's lock from before it creates
        -- the table until it has attached or dropped it (sink/sql/bulk_day_lock.sql)
        IF pg_try_advisory_xact_lock(hashtext('microstructure_partition:' || r.name)) THEN
            EXECUTE format('DROP TABLE microstructure_load.%I', r.name);
            RETURN NEXT r.name;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION microstructure_new_load_table(p_parent text, p_day date, p_symbol text) RETURNS text
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
    PERFORM microstructure_drop_load_table(p_parent, p_day);
    EXECUTE format('CREATE TABLE microstructure_load.%I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE, CONSTRAINT %I CHECK (%I >= %L::timestamptz AND %I < %L::timestamptz))',
                   part, p_parent, part || '_day', col, lo, col, hi);
    -- the day's one symbol as the column's default while it loads: the COPY need not send it per row
    EXECUTE format('ALTER TABLE microstructure_load.%I ALTER COLUMN symbol SET DEFAULT %L', part, p_symbol);
    RETURN part;
END
$$;

CREATE FUNCTION microstructure_attach_load_table(p_parent text, p_day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := microstructure_day_partition_name(p_parent, p_day);
    nsp text := (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = p_parent::regclass);
    lo text := to_char(p_day, 'YYYY-MM-DD') || ' 00:00:00+00';
    hi text := to_char(p_day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
    r record;
BEGIN
    FOR r IN SELECT finish FROM microstructure_day_index_ddl(
                 p_parent, p_day, format('microstructure_load.%I', part)::regclass)
             WHERE finish IS NOT NULL LOOP
        EXECUTE r.finish;
    END LOOP;
    EXECUTE format('ALTER TABLE microstructure_load.%I ALTER COLUMN symbol DROP DEFAULT', part);
    EXECUTE format('ALTER TABLE microstructure_load.%I SET SCHEMA %s', part, nsp);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s.%I FOR VALUES FROM (%L) TO (%L)', p_parent::regclass,
                   nsp, part, lo, hi);
END
$$;
"""

FUNCTIONS = (
    "microstructure_attach_load_table(text, date)",
    "microstructure_new_load_table(text, date, text)",
    "microstructure_drop_load_table(text, date)",
    "microstructure_drop_stale_load_tables()",
    "microstructure_day_index_ddl(text, date, regclass)",
)


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    previous = importlib.import_module("microstructure.db.migrations.versions.0006_day_partitions")
    op.execute(previous.INDEX_DAY_TABLE_SQL)
    for fn in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    op.execute(f"DROP SCHEMA IF EXISTS {LOAD_SCHEMA} CASCADE")
