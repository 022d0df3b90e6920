"""Shared fixtures: the embedded PostgreSQL (one server per session, a fresh database per test) and
TimescaleDB through PGlite (one server per session; CI requires it, laptops without Node.js skip)."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from microstructure.db import migrate
from microstructure.db.embedded import EmbeddedPostgres

TEMPLATE_DB = "ms_template_migrated"
REQUIRE_PGLITE_ENV = "MICROSTRUCTURE_REQUIRE_PGLITE"


def _with_db(dsn: str, dbname: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's embedded PostgreSQL; yields an admin DSN (database `postgres`)."""
    home = tmp_path_factory.mktemp("embedded")
    server = EmbeddedPostgres(home)
    status = server.ensure_running()
    yield status.dsn("postgres")
    server.stop()


@pytest.fixture(scope="session")
def migrated_template(pg_server: str) -> str:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    url = _with_db(pg_server, TEMPLATE_DB)
    migrate.upgrade(url)
    return TEMPLATE_DB


def _create_db(pg_server: str, template: str | None) -> Iterator[str]:
    name = "t_" + uuid.uuid4().hex[:12]
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    yield _with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's embedded server."""
    yield from _create_db(pg_server, None)


@pytest.fixture
def db_url(pg_server: str, migrated_template: str) -> Iterator[str]:
    """A fresh database with the schema at head (copied from a migrated template: fast)."""
    yield from _create_db(pg_server, migrated_template)


@pytest.fixture(scope="session")
def pglite_url() -> Iterator[str]:
    """TimescaleDB (community module) through PGlite on a loopback port."""
    from pglite_server import PGliteServer, node_available

    ok, why = node_available()
    if not ok:
        if os.environ.get(REQUIRE_PGLITE_ENV):
            pytest.fail(f"{REQUIRE_PGLITE_ENV} is set but PGlite cannot run: {why}")
        pytest.skip(f"PGlite TimescaleDB suite skipped: {why} (install Node.js >= 18 to run it)")
    server = PGliteServer()
    try:
        yield server.start()
    finally:
        server.stop()


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


TIMESCALEDB_IMAGE = "timescale/timescaledb:2.26.0-pg17"
# The real image joins the TimescaleDB tests only where a Docker engine answers (checked once, at
# collection): elsewhere the parameter is absent rather than skipped, and PGlite always runs.
TIMESCALE_ENGINES = ["pglite", "docker"] if _docker_answers() else ["pglite"]


@pytest.fixture(scope="session")
def docker_timescaledb_url() -> Iterator[str]:
    """The real TimescaleDB image through testcontainers."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(
        TIMESCALEDB_IMAGE, username="postgres", password="postgres", dbname="postgres"
    ) as pg:
        yield f"postgresql://postgres:postgres@{pg.get_container_host_ip()}:{pg.get_exposed_port(5432)}/postgres"


@pytest.fixture(params=TIMESCALE_ENGINES)
def timescale_url(request: pytest.FixtureRequest) -> str:
    """TimescaleDB with the community module: PGlite always (CI requires it), the image where Docker runs."""
    name = "pglite_url" if request.param == "pglite" else "docker_timescaledb_url"
    return request.getfixturevalue(name)
