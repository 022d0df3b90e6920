"""Which database to use, and a clear one-line error when it cannot be reached."""

from __future__ import annotations

from urllib.parse import urlsplit

from microstructure.config import Settings


class DatabaseUnavailable(RuntimeError):
    """The database URL cannot be used; the message is one line naming the host and the reason."""


def describe_host(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "an unparseable URL"
    return f"{host}:{port}"


def check_url_syntax(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"):
        raise DatabaseUnavailable(
            f"database URL {url.split('@')[-1]!r}: expected a postgresql://user:pass@host:port/dbname URL"
        )
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError as exc:
        raise DatabaseUnavailable(f"database URL host {parts.netloc.split('@')[-1]!r}: {exc}") from None


def libpq_url(url: str) -> str:
    """The URL as libpq (psycopg, asyncpg, ADBC, psql) wants it."""
    for prefix in ("postgresql+psycopg://", "postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + libpq_url(url).removeprefix("postgresql://")


def check_connection(url: str, timeout: int = 10) -> str:
    """Connect once; return the server version string or raise DatabaseUnavailable."""
    import psycopg

    check_url_syntax(url)
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=timeout) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        # libpq repeats the host in its message; keep the reason part short and on one line.
        for marker in ("failed: ", "error: "):
            if marker in reason:
                reason = reason.split(marker)[-1]
        raise DatabaseUnavailable(f"cannot connect to database at {describe_host(url)}: {reason}") from None


def resolve_database_url(settings: Settings, *, start_embedded: bool = True) -> str:
    """`settings.database_url` if set, else the embedded server's DSN (starting it if asked)."""
    if settings.database_url:
        check_url_syntax(settings.database_url)
        return libpq_url(settings.database_url)
    from microstructure.db.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.home, settings.embedded_port)
    st = embedded.ensure_running() if start_embedded else embedded.status()
    return st.dsn()
