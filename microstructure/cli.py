"""The `microstructure` command: one CLI, subcommands registered by the part that owns them."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from microstructure import __version__
from microstructure.config import SettingError, Settings, check_home_shape
from microstructure.db.connect import DatabaseUnavailable
from microstructure.db.embedded import EmbeddedError
from microstructure.logging_setup import configure

# Each module exposes add_parser(subparsers); a module that is not there yet is skipped.
COMMAND_MODULES = (
    "microstructure.demo",
    "microstructure.db.cli",
    "microstructure.status",
    "microstructure.exchange.cli",
    "microstructure.ingest.cli",
    "microstructure.reconcile",
    "microstructure.features_sql.cli",
    "microstructure.export.cli",
    "microstructure.retention",
)


class UserError(RuntimeError):
    """A problem the user can fix; printed as one line, no traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is (as SIGINT raises KeyboardInterrupt), so that its
    clean-ups run. Commands with their own handling (live runs, historical loads) install theirs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microstructure",
        description="Binance USD-M Futures microstructure: collect trades, book snapshots and market data "
        "into PostgreSQL/TimescaleDB, compute 1m/5m/15m features in SQL, export hourly Parquet.",
    )
    parser.add_argument("--version", action="version", version=f"microstructure {__version__}")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="postgresql://user:pass@host:port/db (env MICROSTRUCTURE_DATABASE_URL); "
        "unset: the embedded PostgreSQL under --home",
    )
    parser.add_argument(
        "--home",
        metavar="DIR",
        type=Path,
        help="project folder for the embedded database, spill files and caches "
        "(env MICROSTRUCTURE_HOME, default ./.microstructure)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-v info, -vv debug)")
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if args.database_url:
        settings.database_url = args.database_url
    if args.home:
        settings.home = Path(args.home).expanduser().resolve()
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.verbose, args.log_json)
    import signal

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread (tests): keep the default
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        settings = settings_from_args(args)
        check_home_shape(settings.home)  # one check, one line, for every command (db status included)
        return int(args.handler(args, settings) or 0)
    except (DatabaseUnavailable, EmbeddedError, SettingError, UserError) as exc:
        print(f"microstructure: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("SIGINT", 130)
        print(
            f"microstructure: error: stopped by {name}: what was committed before it is kept; "
            f"run `microstructure {args.command}` again to continue",
            file=sys.stderr,
        )
        return code
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
