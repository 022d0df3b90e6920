"""Alembic environment: one connection, an advisory lock so concurrent upgrades queue, no ORM models."""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import create_engine, pool

from microstructure.config import Settings
from microstructure.db.connect import resolve_database_url, sqlalchemy_url
from microstructure.db.migrate import MIGRATION_LOCK_KEY

config = context.config
log = logging.getLogger("microstructure.db.migrations")


def _log_notice(diag: object) -> None:
    """The server's notices during a migration, in our log: WARNING and above as warnings (a test
    asserts a migration gives none), the rest at debug."""
    severity = getattr(diag, "severity_nonlocalized", None) or getattr(diag, "severity", "") or ""
    text = getattr(diag, "message_primary", "") or ""
    if severity in ("WARNING", "ERROR", "FATAL", "PANIC"):
        log.warning("server %s during migration: %s", severity, text)
    else:
        log.debug("server %s during migration: %s", severity, text)


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        url = resolve_database_url(Settings())
    return sqlalchemy_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        driver = getattr(connection.connection, "driver_connection", None)
        if driver is not None and hasattr(driver, "add_notice_handler"):
            driver.add_notice_handler(_log_notice)
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.rollback()
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
