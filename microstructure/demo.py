"""`microstructure demo`: the main job end to end on the embedded default."""

from __future__ import annotations

import argparse

from microstructure.config import Settings
from microstructure.db import migrate
from microstructure.db.cli import print_schema
from microstructure.db.connect import check_connection, resolve_database_url


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded default and show what it built",
        description="Start (or reuse) the database, apply the schema and print what is there.",
    )
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings)
    check_connection(url)
    migrate.upgrade(url)
    print(f"database: {url}")
    print_schema(url)
    return 0
