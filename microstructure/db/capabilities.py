"""What the connected database can do, detected at migration time, never assumed.

Three engines (ARCHITECTURE.md): TimescaleDB with its community module (hypertables, compression,
continuous aggregates), an Apache-only TimescaleDB build (hypertables only) and plain PostgreSQL
(ordinary tables plus compat SQL functions; features by the incremental refresher).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection

from microstructure.config import SettingError

Engine = Literal["timescaledb", "timescaledb-apache", "postgresql"]
ENGINE_OVERRIDE_ENV = "MICROSTRUCTURE_ENGINE"


@dataclass(frozen=True)
class Capabilities:
    engine: Engine
    server_version: str
    timescaledb_version: str | None = None

    @property
    def hypertables(self) -> bool:
        return self.engine != "postgresql"

    @property
    def compression(self) -> bool:
        return self.engine == "timescaledb"

    @property
    def continuous_aggregates(self) -> bool:
        return self.engine == "timescaledb"


ENGINE_OVERRIDES = ("auto", "postgresql", "timescaledb-apache")


def engine_override(override: str | None = None) -> str | None:
    """`override`, else MICROSTRUCTURE_ENGINE, checked: None/"auto" (detect), "postgresql" or
    "timescaledb-apache". Anything else is a SettingError naming the variable and the accepted values."""
    value = override or os.environ.get(ENGINE_OVERRIDE_ENV) or None
    if value not in (None, *ENGINE_OVERRIDES):
        raise SettingError(
            f"{ENGINE_OVERRIDE_ENV}: expected one of {', '.join(ENGINE_OVERRIDES)}, got {value!r}"
        )
    return None if value == "auto" else value


def _scalar(conn: Connection, sql: str) -> str | None:
    row = conn.execute(text(sql)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def detect(conn: Connection, *, install: bool = True, override: str | None = None) -> Capabilities:
    """Detect the engine; with install=True, create the timescaledb extension when it is available.

    `override` (or MICROSTRUCTURE_ENGINE) narrows what a TimescaleDB server is used for:
    "postgresql" builds plain tables (features by the incremental refresher), "timescaledb-apache"
    builds hypertables without compression, as on an Apache-only build. It never widens: asking
    for TimescaleDB where the extension is absent gives plain PostgreSQL.
    """
    override = engine_override(override)
    server_version = _scalar(conn, "SHOW server_version") or "?"
    if override == "postgresql":
        return Capabilities("postgresql", server_version)
    installed = _scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if installed is None and install:
        available = _scalar(conn, "SELECT name FROM pg_available_extensions WHERE name = 'timescaledb'")
        if available:
            try:
                with conn.begin_nested():
                    conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
            except Exception:  # not in shared_preload_libraries: treat as plain PostgreSQL
                installed = None
            else:
                installed = _scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if installed is None:
        return Capabilities("postgresql", server_version)
    try:
        with conn.begin_nested():
            license_ = _scalar(conn, "SELECT current_setting('timescaledb.license', true)")
    except Exception:
        license_ = None
    apache = license_ == "apache" or override == "timescaledb-apache"
    engine: Engine = "timescaledb-apache" if apache else "timescaledb"
    return Capabilities(engine, server_version, installed)


def stored_engine(conn: Connection) -> Engine | None:
    """The engine the schema was built for, as recorded by the first migration."""
    exists = _scalar(conn, "SELECT to_regclass('microstructure_meta')::text")
    if exists is None:
        return None
    value = _scalar(conn, "SELECT value FROM microstructure_meta WHERE key = 'engine'")
    return value  # type: ignore[return-value]
