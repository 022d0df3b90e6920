"""Which database to use, and a clear one-line error when it cannot be reached.

Every command that opens the database goes through `resolve_database_url`, which checks the URL's
syntax and (for an external database) connects once, so a bad URL ends in one `DatabaseUnavailable`
line naming the host and the reason, never a driver traceback from deeper down.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qs, unquote, urlsplit

from microstructure.config import Settings

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg")
DEFAULT_SOCKET = "the default unix socket"
MALFORMED = "a malformed URL"


class DatabaseUnavailable(RuntimeError):
    """The database URL cannot be used; the message is one line naming the host and the reason."""


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s]*)@")  # scheme://user:password@
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)


def _password(url: str) -> str | None:
    """The URL's password as written (best effort, also for URLs urlsplit rejects)."""
    m = _USERINFO.match(url)
    if m and ":" in m.group(2):
        return m.group(2).split(":", 1)[1] or None
    return None


def mask_url(url: str) -> str:
    """`url` with its password field (the part after `user:` in `scheme://user:password@`) replaced
    by ***, found by its position, whatever the scheme; key=value DSNs get `password=***`. The
    scheme, user, host, port and database stay as written, so a wrong one can be seen."""
    masked = _USERINFO.sub(
        lambda m: (
            m.group(1) + (m.group(2).split(":", 1)[0] + ":***" if ":" in m.group(2) else m.group(2)) + "@"
        ),
        url,
    )
    return _KV_PASSWORD.sub(lambda m: m.group(1) + "***", masked)


def _redact(message: str, url: str) -> str:
    """`message` on one line, with passwords masked by position: wherever a URL's userinfo
    (`scheme://user:password@`) or a `password=` field appears in it (libpq may echo the URL), never
    by searching for the password's text (a password `o` must not mask every "o")."""
    message = " ".join(message.split())
    return mask_url(message)


def _host_port(url: str) -> tuple[str | None, str | None]:
    """Host and port as libpq reads them: the URL's netloc, overridden by ?host= / ?port=."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(libpq_url(url))
        host, port = params.get("host") or params.get("hostaddr"), params.get("port")
        return (str(host) if host else None), (str(port) if port else None)
    except ProgrammingError:
        pass  # e.g. an unknown query parameter: read what we can ourselves
    parts = urlsplit(url)  # ValueError for a malformed netloc: the caller says so
    query = parse_qs(parts.query)
    host = (query.get("host") or query.get("hostaddr") or [None])[-1] or parts.hostname
    port = (query.get("port") or [None])[-1]
    if port is None:
        netloc = parts.netloc.rpartition("@")[2]
        m = re.search(r":(\d*)$", netloc)
        port = m.group(1) if m and m.group(1) else None
    return (unquote(host) if host else None), port


def describe_host(url: str) -> str:
    """Where libpq will connect: `host:port`, `unix socket DIR/.s.PGSQL.PORT`, or several joined by "or"."""
    try:
        host, port = _host_port(url)
    except ValueError:
        return MALFORMED
    host = host or os.environ.get("PGHOST") or os.environ.get("PGHOSTADDR") or ""
    ports = (port or os.environ.get("PGPORT") or "5432").split(",")
    hosts = host.split(",")
    where = []
    for i, h in enumerate(hosts):
        p = ports[i] if i < len(ports) else ports[-1]
        p = p or "5432"
        if not h:
            where.append(f"{DEFAULT_SOCKET} (port {p})")
        elif h.startswith("/") or re.match(r"[A-Za-z]:[\\/]", h):
            where.append(f"unix socket {h.rstrip('/')}/.s.PGSQL.{p}")
        elif ":" in h:
            where.append(f"[{h}]:{p}")
        else:
            where.append(f"{h}:{p}")
    return " or ".join(where)


def check_url_syntax(url: str) -> None:
    """Raise DatabaseUnavailable (one line, no password) if libpq could not even parse the URL."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        shown = mask_url(url)
        why = f"the scheme {scheme + '://'!r} is not PostgreSQL's; " if scheme else ""
        raise DatabaseUnavailable(
            f"database URL {shown!r}: {why}expected a postgresql://user:pass@host:port/dbname URL"
        )
    try:
        conninfo_to_dict(libpq_url(url))
    except ProgrammingError as exc:  # libpq's own reason: bad IPv6 brackets, unknown ?parameter, ...
        where = describe_host(url)
        subject = "database URL" if where == MALFORMED else f"database URL for {where}"
        raise DatabaseUnavailable(f"{subject} is malformed: {_redact(str(exc), url)}") from None
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DatabaseUnavailable(f"database URL is malformed: {_redact(str(exc), url)}") from None
    if "," not in parts.netloc:  # libpq allows host1:port1,host2:port2; urlsplit does not
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
    except psycopg.Error as exc:
        reason = _redact(str(exc), url)
        where = describe_host(url)
        socket = re.search(r'on socket "([^"]+)"', reason)
        if where.startswith(DEFAULT_SOCKET) and socket:
            where = f"unix socket {socket.group(1)}"
        # libpq repeats the host in its message; keep the reason part short and on one line.
        for marker in ("failed: ", "error: "):
            if marker in reason:
                reason = reason.split(marker)[-1]
        raise DatabaseUnavailable(f"cannot connect to database at {where}: {reason}") from None


def resolve_database_url(settings: Settings, *, start_embedded: bool = True, check: bool = True) -> str:
    """`settings.database_url` if set, else the embedded server's DSN (starting it if asked).

    An external URL is always checked for syntax and, with `check` (the default, what every command
    that opens the database wants), connected to once: the single place a bad URL becomes one clear
    `DatabaseUnavailable` line. `check=False` is for commands that only print the URL.
    """
    if settings.database_url:
        if check:
            check_connection(settings.database_url)
        else:
            check_url_syntax(settings.database_url)
        return libpq_url(settings.database_url)
    from microstructure.config import check_home
    from microstructure.db.embedded import EmbeddedPostgres

    check_home(settings.home)  # the embedded server's data lives there
    embedded = EmbeddedPostgres(settings.home, settings.embedded_port)
    st = embedded.ensure_running() if start_embedded else embedded.status()
    return st.dsn()


def default_database_url() -> str:
    """The database a library call given no dsn uses: the CLI's resolution, with the settings from
    the environment (MICROSTRUCTURE_DATABASE_URL, else the embedded server under MICROSTRUCTURE_HOME,
    started if needed). The schema is not migrated here: `microstructure db upgrade` (or any
    collecting command) does that."""
    return resolve_database_url(Settings())
