"""Apply the Alembic migrations from Python (what `microstructure db upgrade` and every writer call)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text

from microstructure.db.capabilities import engine_override
from microstructure.db.connect import sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 7_349_201_553  # pg_advisory_lock key shared by every migrating process


def alembic_config(url: str, engine: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    if engine:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(url: str, revision: str = "head", *, engine: str | None = None) -> None:
    """Bring the schema to `revision`; a no-op when it is already there. Safe to call concurrently."""
    engine_override(engine)  # a bad MICROSTRUCTURE_ENGINE is a one-line SettingError, even on a no-op
    try:
        command.upgrade(alembic_config(url, engine), revision)
        if revision == "head":
            ensure_feature_layer(url)
    except Exception as exc:
        _privilege_error(exc, url)
        raise


def ensure_feature_layer(url: str) -> bool:
    """Rebuild the feature layer when the code's feature SQL differs from the database's
    (features_sql/layer.py), under the migration lock, in one transaction. True when it rebuilt."""
    from microstructure.features_sql.layer import ensure_current

    eng = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            conn.commit()
            try:
                rebuilt = ensure_current(conn)
                conn.commit()
                return rebuilt
            finally:
                conn.rollback()
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                conn.commit()
    finally:
        eng.dispose()


def _privilege_error(exc: BaseException, url: str) -> None:
    """A role that may not read or change the schema: one DatabaseUnavailable line saying so."""
    import psycopg

    from microstructure.db.connect import DatabaseUnavailable, _redact, describe_host

    orig = getattr(exc, "orig", exc)
    if isinstance(orig, psycopg.errors.InsufficientPrivilege):
        user = urlsplit(url).username or "the database user"
        raise DatabaseUnavailable(
            f"database at {describe_host(url)}: {user} lacks privileges to apply the schema "
            f"({_redact(orig.diag.message_primary or str(orig), url)}); run `microstructure db upgrade` as the "
            "schema's owner once, or grant this role ownership"
        ) from None


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


@dataclass(frozen=True)
class TableInfo:
    name: str
    kind: str  # hypertable | table | partitioned (N days)
    rows_estimate: int
    chunk_interval: str | None = None
    compression: str | None = None


@dataclass(frozen=True)
class SchemaSummary:
    revision: str | None
    engine: str | None
    server_version: str
    timescaledb_version: str | None
    tables: list[TableInfo]
    functions: list[str]


def summarize(url: str) -> SchemaSummary:
    """What the schema holds now: revision, engine, tables (with hypertable facts) and compat functions."""
    eng = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with eng.connect() as conn:
            server_version = conn.execute(text("SHOW server_version")).scalar_one()
            has_version_table = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
            revision = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if has_version_table
                else None
            )
            meta: dict[str, str] = {}
            if conn.execute(text("SELECT to_regclass('microstructure_meta')")).scalar():
                meta = dict(conn.execute(text("SELECT key, value FROM microstructure_meta")).all())  # type: ignore[arg-type]
            tsdb = conn.execute(
                text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            ).scalar()
            hyper: dict[str, tuple[str | None, str | None]] = {}
            if tsdb:
                for name, interval in conn.execute(
                    text(
                        "SELECT hypertable_name, time_interval::text FROM timescaledb_information.dimensions "
                        "WHERE hypertable_schema = current_schema()"
                    )
                ):
                    hyper[name] = (interval, None)
                for name, segby, ordby in conn.execute(
                    text(
                        "SELECT hypertable_name, "
                        " string_agg(attname, ', ' ORDER BY segmentby_column_index) "
                        "   FILTER (WHERE segmentby_column_index IS NOT NULL), "
                        " string_agg(attname, ', ' ORDER BY orderby_column_index) "
                        "   FILTER (WHERE orderby_column_index IS NOT NULL) "
                        "FROM timescaledb_information.compression_settings "
                        "WHERE hypertable_schema = current_schema() GROUP BY hypertable_name"
                    )
                ):
                    interval = hyper.get(name, (None, None))[0]
                    hyper[name] = (interval, f"segment by {segby}; order by {ordby}")
            tables = []
            for name, estimate, parts in conn.execute(
                text(
                    # a day partition is shown as part of its parent: rows summed, partitions counted
                    "SELECT c.relname, CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0) "
                    " FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid WHERE i.inhparent = c.oid) "
                    " ELSE greatest(c.reltuples, 0) END::bigint, "
                    " CASE WHEN c.relkind = 'p' THEN (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) END "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
                    "AND c.relname <> 'alembic_version' ORDER BY c.relname"
                )
            ):
                if name in hyper:
                    interval, comp = hyper[name]
                    tables.append(TableInfo(name, "hypertable", int(estimate), interval, comp))
                elif parts is not None:
                    tables.append(TableInfo(name, f"partitioned ({parts} days)", int(estimate), "1 day"))
                else:
                    tables.append(TableInfo(name, "table", int(estimate)))
            if hyper:
                # a hypertable's own reltuples stays 0: its rows live in its chunks (one query for all)
                approx = dict(
                    conn.execute(
                        text(
                            "SELECT h, approximate_row_count(h::regclass) FROM unnest(CAST(:names AS text[])) h"
                        ),
                        {"names": [t.name for t in tables if t.kind == "hypertable"]},
                    ).all()
                )
                tables = [
                    TableInfo(t.name, t.kind, int(approx.get(t.name) or 0), t.chunk_interval, t.compression)
                    if t.kind == "hypertable" else t
                    for t in tables
                ]  # fmt: skip
            functions = [
                f"{name}({args})"
                for name, args in conn.execute(
                    text(
                        "SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
                        "JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = current_schema() AND p.proname IN ('time_bucket', 'first', 'last') "
                        # ours only: not TimescaleDB's own functions of the same names
                        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass "
                        "AND d.objid = p.oid AND d.deptype = 'e') "
                        "ORDER BY 1, 2"
                    )
                )
            ]
    finally:
        eng.dispose()
    return SchemaSummary(
        revision=revision,
        engine=meta.get("engine"),
        server_version=str(server_version),
        timescaledb_version=tsdb,
        tables=tables,
        functions=functions,
    )
