"""`microstructure db ...`: the database the other commands use."""

from __future__ import annotations

import argparse
import sys

from microstructure.config import Settings
from microstructure.db import migrate
from microstructure.db.connect import check_connection, resolve_database_url
from microstructure.db.embedded import EmbeddedPostgres


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = subparsers.add_parser(
        "db",
        help="the database: embedded server, DSN, migrations",
        description="Manage the database. Without --database-url / MICROSTRUCTURE_DATABASE_URL the "
        "embedded PostgreSQL under --home is used, started on first use.",
    )
    sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    sub.add_parser(
        "url", help="print a DSN for psql and Grafana (starts the embedded server if needed)"
    ).set_defaults(handler=cmd_url)
    sub.add_parser(
        "status", help="is the embedded server running, where, which schema revision"
    ).set_defaults(handler=cmd_status)
    sub.add_parser("stop", help="stop the embedded server").set_defaults(handler=cmd_stop)
    up = sub.add_parser("upgrade", help="apply the migrations (every writing command does this first)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    up.set_defaults(handler=cmd_upgrade)
    down = sub.add_parser("downgrade", help="roll the schema back (default: remove everything)")
    down.add_argument("revision", nargs="?", default="base", help="target revision (default: base)")
    down.set_defaults(handler=cmd_downgrade)
    sub.add_parser(
        "schema", help="print the schema: engine, tables, hypertables, compat functions"
    ).set_defaults(handler=cmd_schema)


def cmd_url(args: argparse.Namespace, settings: Settings) -> int:
    print(resolve_database_url(settings, check=False))  # printing a DSN needs no connection
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url:
        url = resolve_database_url(settings, check=False)
        version = check_connection(url)
        print(f"database: external, PostgreSQL {version}")
    else:
        st = EmbeddedPostgres(settings.home, settings.embedded_port).status()
        if not st.running:
            print(f"embedded PostgreSQL: stopped (data {st.data_dir})")
            return 0
        print(
            f"embedded PostgreSQL {st.version}: running, pid {st.pid}, 127.0.0.1:{st.port}, data {st.data_dir}"
        )
        url = st.dsn()
    summary = migrate.summarize(url)
    print(f"schema revision: {summary.revision or 'none'}; engine: {summary.engine or 'not migrated'}")
    return 0


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url:
        print("an external database is configured; nothing to stop")
        return 0
    stopped = EmbeddedPostgres(settings.home, settings.embedded_port).stop()
    print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    return 0


def cmd_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    migrate.upgrade(url, args.revision)
    summary = migrate.summarize(url)
    print(f"schema at revision {summary.revision} ({summary.engine})")
    return 0


def cmd_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    migrate.downgrade(url, args.revision)
    print(f"schema downgraded to {args.revision}")
    return 0


def print_schema(url: str) -> None:
    from rich.console import Console
    from rich.table import Table

    s = migrate.summarize(url)
    console = Console(width=None if sys.stdout.isatty() else 140)  # pipes and logs get whole columns
    console.print(
        f"[bold]schema[/] revision {s.revision or 'none'} · engine {s.engine or '?'} · "
        f"PostgreSQL {s.server_version}"
        + (f" · TimescaleDB {s.timescaledb_version}" if s.timescaledb_version else "")
    )
    table = Table("table", "kind", "rows (est.)", "chunk interval", "compression")
    for t in s.tables:
        table.add_row(t.name, t.kind, str(t.rows_estimate), t.chunk_interval or "", t.compression or "")
    console.print(table)
    if s.functions:
        counts: dict[str, int] = {}
        for f in s.functions:
            counts[f.split("(")[0]] = counts.get(f.split("(")[0], 0) + 1
        console.print("compat functions: " + ", ".join(f"{n} ({c} overloads)" for n, c in counts.items()))


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    print_schema(url)
    return 0
