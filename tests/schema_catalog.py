"""A comparable listing of what the migrations create in the public schema (extension objects excluded)."""

from __future__ import annotations

import psycopg

NOT_EXTENSION_MEMBER = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"


def catalog_snapshot(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        has_alembic = conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is not None
        queries = {
            "relations": "SELECT relname, relkind FROM pg_class c WHERE relnamespace = 'public'::regnamespace AND "
            + NOT_EXTENSION_MEMBER.format(oid="c.oid")
            + " ORDER BY 1",
            "functions": "SELECT proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
            "WHERE pronamespace = 'public'::regnamespace AND "
            + NOT_EXTENSION_MEMBER.format(oid="p.oid")
            + " ORDER BY 1, 2",
            "types": "SELECT typname FROM pg_type t WHERE typnamespace = 'public'::regnamespace AND typtype = 'c' "
            "AND typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c') AND "
            + NOT_EXTENSION_MEMBER.format(oid="t.oid")
            + " ORDER BY 1",
            "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1",
            "alembic": "SELECT version_num FROM alembic_version"
            if has_alembic
            else "SELECT NULL WHERE false",
        }
        return {k: conn.execute(sql).fetchall() for k, sql in queries.items()}
