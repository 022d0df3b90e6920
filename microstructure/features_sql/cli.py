"""`microstructure features refresh | show`: materialise the feature stages by hand, look at bars."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, date, datetime
from typing import Any

from microstructure.config import SettingError, Settings
from microstructure.features_sql.stages import TIMEFRAMES, view_name

ENGINE_PATHS = {
    "continuous_aggregates": "TimescaleDB continuous aggregates (refresh policies, real-time aggregation)",
    "refresher": "the incremental refresher over ordinary tables (plain PostgreSQL or Apache-only TimescaleDB)",
}
SHOW_DEFAULT = (
    "open", "high", "low", "close", "volume", "trade_count", "cvd", "vwap", "buy_pressure", "imbalance_5",
    "spread_bps_avg", "ofi", "funding_rate", "open_interest", "liq_long_vol", "liq_short_vol",
)  # fmt: skip
LOWER_BOUNDS = ("liq_long_vol", "liq_short_vol", "liq_ratio")


def engine_line(settings: Settings) -> str:
    """Which engine path the configured database uses, for --help (never starts a server)."""
    try:
        import psycopg

        from microstructure.db.connect import libpq_url

        if settings.database_url:
            url = libpq_url(settings.database_url)
        else:
            from microstructure.db.embedded import EmbeddedPostgres

            st = EmbeddedPostgres(settings.home, settings.embedded_port).status()
            if not st.running:
                return f"Engine path here: {ENGINE_PATHS['refresher']} (the embedded PostgreSQL, not running now)."
            url = st.dsn()
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SELECT value FROM microstructure_meta WHERE key = 'features'").fetchone()
        if row is None:
            return "Engine path here: not known yet (run `microstructure db upgrade`)."
        return f"Engine path here: {ENGINE_PATHS.get(row[0], row[0])}."
    except Exception as exc:  # help must print whatever the database does
        return f"Engine path here: unknown ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})."


class _HelpWithEngine(argparse.Action):
    """-h/--help that also says which engine path the database in use has."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show this help (and the engine path of the database in use) and exit")  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        parser.print_help()
        try:
            settings = Settings()
            if getattr(namespace, "database_url", None):
                settings.database_url = namespace.database_url
            if getattr(namespace, "home", None):
                settings.home = namespace.home.expanduser().resolve()
        except SettingError as exc:
            print(f"\nEngine path here: unknown ({exc})")
        else:
            print("\n" + engine_line(settings))
        parser.exit()


def _parser(sub: argparse._SubParsersAction, name: str, **kw: Any) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(name, add_help=False, **kw)
    p.add_argument("-h", "--help", action=_HelpWithEngine)
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    features = _parser(
        subparsers,
        "features",
        help="1m/5m/15m microstructure features: refresh, show (export, pull)",
        description="Features are computed in SQL (microstructure/features_sql/) into the views features_1m, "
        "features_5m and features_15m. On TimescaleDB with continuous aggregates each stage is a continuous "
        "aggregate with a refresh policy; on plain PostgreSQL (the embedded default) and Apache-only "
        "TimescaleDB the incremental refresher materialises the same SELECTs into tables. Live collection "
        "(collect all --mode live) and historical loads refresh them on their own.",
    )
    sub = features.add_subparsers(dest="features_command", metavar="COMMAND", required=True)
    features.set_defaults(features_subcommands=sub)
    ref = _parser(
        sub,
        "refresh",
        help="re-materialise the feature stages (all data, or a symbol / time range)",
        description="Re-materialise the feature stages from the raw tables, whatever the invalidation log "
        "says: after a change of symbol_settings.large_trade_notional, or to rebuild a history. Without "
        "--start/--end the whole range of stored data. Also consumes the invalidation log.",
    )
    ref.add_argument("--symbol", action="append", metavar="SYMBOL", help="only this contract (repeatable)")
    ref.add_argument("--start", metavar="TIME", help="UTC date or time, e.g. 2026-03-01 or 2026-03-01T08:00")
    ref.add_argument("--end", metavar="TIME", help="UTC date or time (exclusive)")
    ref.set_defaults(handler=cmd_refresh)
    show = _parser(
        sub,
        "show",
        help="print the last bars of a symbol",
        description="Print the last N bars of features_<timeframe> for a symbol. liq_* columns are lower "
        "bounds: the exchange samples liquidations (at most one per symbol per second).",
    )
    show.add_argument("--symbol", required=True, metavar="SYMBOL")
    show.add_argument("--timeframe", default="1m", metavar="TF", help="1m (default) | 5m | 15m")
    show.add_argument("--last", default="20", metavar="N", help="how many bars (default 20)")
    show.add_argument(
        "--columns",
        metavar="LIST",
        help=f"comma-separated columns, or 'all' (default: {','.join(SHOW_DEFAULT)})",
    )
    show.set_defaults(handler=cmd_show)


def features_subcommands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The `features` group's sub-commands, for other modules to add theirs (export, pull)."""
    return subparsers.choices["features"].get_default("features_subcommands")


def add_subcommand(sub: argparse._SubParsersAction, name: str, **kw: Any) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """A `features` sub-command whose --help also names the engine path."""
    return _parser(sub, name, **kw)


# ---------------------------------------------------------------- arguments


def parse_time(value: str, flag: str) -> datetime:
    """A UTC date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM[:SS], 'Z' or +00:00 allowed)."""
    v = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            d = date.fromisoformat(v)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        t = datetime.fromisoformat(v.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise SettingError(
            f"{flag}: expected a UTC date or time like 2026-03-01 or 2026-03-01T08:00, got {value!r}"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    lo = parse_time(start, "--start") if start else None
    hi = parse_time(end, "--end") if end else None
    if lo is not None and hi is not None and hi <= lo:
        raise SettingError(f"--end: expected a time after --start {lo.isoformat()}, got {end!r}")
    return lo, hi


def parse_timeframe(value: str, flag: str = "--timeframe") -> str:
    tf = value.strip().lower()
    if tf not in TIMEFRAMES:
        raise SettingError(f"{flag}: expected one of {', '.join(TIMEFRAMES)}, got {value!r}")
    return tf


def prepared_database(settings: Settings) -> str:
    from microstructure.db import migrate
    from microstructure.db.connect import resolve_database_url

    url = resolve_database_url(settings)
    migrate.upgrade(url)
    return url


# ---------------------------------------------------------------- handlers


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from microstructure.args import parse_symbols
    from microstructure.features_sql.refresher import features_engine, refresh_range

    symbols = parse_symbols(args.symbol) if args.symbol else None
    start, end = parse_range(args.start, args.end)
    url = prepared_database(settings)

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            engine = await features_engine(conn)
            return engine, await refresh_range(conn, symbols=symbols, start=start, end=end, dsn=url)
        finally:
            await conn.close()

    engine, report = asyncio.run(run())
    what = ", ".join(symbols) if symbols else "every symbol"
    print(f"features refreshed for {what} by {ENGINE_PATHS.get(engine, engine)}:")
    print(f"  {report.windows} windows, {report.statements} statements, {report.seconds:.2f} s")
    if report.rows_written:
        print(f"  {report.rows_written:,} stage rows written")
    if engine == "continuous_aggregates" and symbols:
        print("  (continuous aggregates refresh every symbol of the range at once)")
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.args import parse_int, parse_symbols

    symbol = parse_symbols([args.symbol])[0]
    tf = parse_timeframe(args.timeframe)
    last = parse_int(args.last, "--last", 1, 100_000)
    url = prepared_database(settings)
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",") if c.strip()]
    print_bars(url, symbol, tf, last, columns)
    return 0


def print_bars(url: str, symbol: str, tf: str, last: int, columns: list[str] | None = None) -> int:
    """The last `last` bars of features_<tf> for `symbol` as a table (columns: SHOW_DEFAULT, a list,
    or ['all']); liquidation columns marked as lower bounds. Returns the number of bars shown."""
    import psycopg
    from rich.console import Console
    from rich.table import Table

    with psycopg.connect(url) as conn:
        cur = conn.execute(
            f"SELECT * FROM {view_name(tf)} WHERE symbol = %s ORDER BY bucket DESC LIMIT %s", (symbol, last)
        )
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()[::-1]
    if columns is None:
        cols = list(SHOW_DEFAULT)
    elif [c.lower() for c in columns] == ["all"]:
        cols = [n for n in names if n not in ("symbol", "bucket")]
    else:
        cols = [c for c in dict.fromkeys(columns) if c != "bucket"]  # bucket is always the first column
        unknown = [c for c in cols if c not in names]
        if unknown:
            raise SettingError(f"--columns: no column {unknown[0]!r} in {view_name(tf)}; try --columns all")
    # a pipe or a log gets every column whole; a terminal gets what fits
    console = Console(width=None if sys.stdout.isatty() else 30 + 16 * len(cols))
    if not rows:
        console.print(f"no {tf} bars for {symbol}")
        return 0
    table = Table(title=f"{symbol} {view_name(tf)} (last {len(rows)} bars, UTC)")
    table.add_column("bucket", no_wrap=True)
    for c in cols:
        table.add_column(c + (" (>=)" if c in LOWER_BOUNDS else ""), justify="right")
    idx = {n: i for i, n in enumerate(names)}
    for r in rows:
        table.add_row(_fmt(r[idx["bucket"]]), *(_fmt(r[idx[c]]) for c in cols))
    console.print(table)
    if any(c in LOWER_BOUNDS for c in cols):
        console.print(
            "(>=) lower bounds: the exchange samples liquidations, at most one per symbol per second"
        )
    return len(rows)
