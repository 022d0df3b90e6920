"""`microstructure collect aggtrades ...`: historical (archives + REST) or live aggregate trades."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import date
from typing import Any

from microstructure.config import ENV_PREFIX, SettingError, Settings

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")
DEFAULT_WEIGHT_BUDGET = 1200
DEFAULT_AGG_STALE_TIMEOUT = 30.0  # a quiet symbol's aggTrade stream may be silent for a while
MAX_WEIGHT_BUDGET = 2400


def add_url_options(p: argparse.ArgumentParser) -> None:
    """--exchange-url, --rest-url, --ws-url, --archive-url (applied by apply_urls)."""
    p.add_argument(
        "--exchange-url",
        metavar="URL",
        default=os.environ.get(ENV_PREFIX + "EXCHANGE_URL") or None,
        help="one base for REST, websocket and archives, e.g. the local exchange http://127.0.0.1:8765 "
        f"(env {ENV_PREFIX}EXCHANGE_URL)",
    )
    p.add_argument("--rest-url", metavar="URL", help=f"REST base (env {ENV_PREFIX}REST_URL)")
    p.add_argument("--ws-url", metavar="URL", help=f"websocket base (env {ENV_PREFIX}WS_URL)")
    p.add_argument(
        "--archive-url", metavar="URL", help=f"data.binance.vision base (env {ENV_PREFIX}ARCHIVE_URL)"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    collect = subparsers.add_parser(
        "collect",
        help="collect Binance USD-M Futures data into the database",
        description="Collect market data from Binance USD-M Futures (or the local exchange: --exchange-url). "
        "Every collect command applies the database migrations first.",
    )
    sub = collect.add_subparsers(dest="collect_command", metavar="KIND", required=True)
    agg = sub.add_parser(
        "aggtrades",
        help="aggregate trades: historical (archives + REST) or live (websocket)",
        description="Historical mode loads complete past UTC days from data.binance.vision archives "
        "(verified sha256) and fills today and unpublished days from REST by fromId; a run started again "
        "continues where the last one stopped. Live mode follows the websocket streams. "
        "Exit codes: 0 done, 1 done with refused days or gaps left, 2 bad arguments/setup, "
        "3 exchange refused or unreachable (e.g. IP ban).",
    )
    agg.add_argument(
        "--symbol",
        action="append",
        required=True,
        metavar="SYMBOL",
        help="contract, e.g. BTCUSDT (repeatable; comma-separated lists accepted)",
    )
    agg.add_argument("--mode", default="historical", metavar="MODE", help="historical (default) | live")
    agg.add_argument(
        "--days",
        metavar="N",
        help="historical: the last N complete UTC days plus today so far (exchange clock)",
    )
    agg.add_argument("--start", metavar="YYYY-MM-DD", help="historical: first UTC day")
    agg.add_argument("--end", metavar="YYYY-MM-DD", help="historical: last UTC day (default: today)")
    add_url_options(agg)
    agg.add_argument(
        "--live-seconds", metavar="N", help="live: stop after N seconds (default: run until stopped)"
    )
    add_stale_timeout(agg, DEFAULT_AGG_STALE_TIMEOUT)
    agg.add_argument("--redundant", action="store_true", help="live: two connections per stream, merged")
    agg.add_argument(
        "--weight-budget",
        metavar="N",
        default=str(DEFAULT_WEIGHT_BUDGET),
        help=f"REST request weight per minute to stay under (default {DEFAULT_WEIGHT_BUDGET}; Binance allows 2400)",
    )
    agg.add_argument("--no-progress", action="store_true", help="no progress bars")
    agg.add_argument("--no-monthly", action="store_true", help="historical: daily archives only")
    agg.add_argument(
        "--keep-archives", action="store_true", help="historical: keep verified archives under HOME/archives"
    )
    agg.set_defaults(handler=cmd_collect_aggtrades)
    # The other collectors (book-depth, market, all) join the same `collect` group when present.
    try:
        from microstructure.ingest import cli_market
    except ModuleNotFoundError as exc:
        if exc.name != "microstructure.ingest.cli_market":
            raise
    else:
        cli_market.add_parsers(sub)


# ---------------------------------------------------------------- argument checks


def parse_day(value: str, flag: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        raise SettingError(f"{flag}: expected YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise SettingError(f"{flag}: expected YYYY-MM-DD, got {value!r}") from None


def parse_int(value: str, flag: str, lo: int, hi: int | None = None) -> int:
    expected = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    try:
        n = int(str(value).strip())
    except ValueError:
        raise SettingError(f"{flag}: expected {expected}, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise SettingError(f"{flag}: expected {expected}, got {value!r}")
    return n


def parse_seconds(value: str, flag: str) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise SettingError(f"{flag}: expected a number of seconds > 0, got {value!r}") from None
    if not x > 0:
        raise SettingError(f"{flag}: expected a number of seconds > 0, got {value!r}")
    return x


def add_stale_timeout(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument(
        "--stale-timeout",
        metavar="SECONDS",
        default=str(default),
        help=f"live: a connection with no message for this long is made again (default {default:g})",
    )


def parse_symbols(values: list[str]) -> list[str]:
    out: list[str] = []
    for raw in values:
        for part in raw.split(","):
            sym = part.strip().upper()
            if not sym:
                continue
            if not SYMBOL_RE.fullmatch(sym):
                raise SettingError(f"--symbol: expected a contract name like BTCUSDT, got {part.strip()!r}")
            if sym not in out:
                out.append(sym)
    if not out:
        raise SettingError("--symbol: expected at least one contract name like BTCUSDT")
    return out


def _check_url(value: str, flag: str, schemes: tuple[str, ...]) -> str:
    v = value.strip().rstrip("/")
    if not v.startswith(tuple(s + "://" for s in schemes)) or "://" not in v or not v.split("://", 1)[1]:
        raise SettingError(f"{flag}: expected a {' or '.join(s + '://' for s in schemes)} URL, got {value!r}")
    return v


def apply_urls(args: argparse.Namespace, settings: Settings) -> None:
    """--exchange-url first (REST, websocket, archives on one base), then the specific URL flags."""
    if args.exchange_url:
        settings.point_at_exchange(_check_url(args.exchange_url, "--exchange-url", ("http", "https")))
    if args.rest_url:
        settings.rest_url = _check_url(args.rest_url, "--rest-url", ("http", "https"))
    if args.ws_url:
        settings.ws_url = _check_url(args.ws_url, "--ws-url", ("ws", "wss"))
    if args.archive_url:
        settings.archive_url = _check_url(args.archive_url, "--archive-url", ("http", "https"))


# ---------------------------------------------------------------- handler


def cmd_collect_aggtrades(args: argparse.Namespace, settings: Settings) -> int:
    mode = (args.mode or "").strip().lower()
    if mode not in ("historical", "live"):
        raise SettingError(f"--mode: expected historical or live, got {args.mode!r}")
    symbols = parse_symbols(args.symbol)
    budget = parse_int(args.weight_budget, "--weight-budget", 20, MAX_WEIGHT_BUDGET)
    apply_urls(args, settings)
    if mode == "historical":
        if args.live_seconds is not None:
            raise SettingError("--live-seconds: only with --mode live")
        if args.redundant:
            raise SettingError("--redundant: only with --mode live")
        days = start = end = None
        if args.days is not None:
            if args.start or args.end:
                raise SettingError("--days: give either --days N or --start/--end, not both")
            days = parse_int(args.days, "--days", 0)
        elif args.start:
            start = parse_day(args.start, "--start")
            end = parse_day(args.end, "--end") if args.end else None
            if end is not None and end < start:
                raise SettingError(f"--end: expected a day on or after --start {start}, got {args.end!r}")
        else:
            raise SettingError("--start: historical mode needs --start YYYY-MM-DD (and --end) or --days N")
        return run_historical(
            settings,
            symbols,
            start=start,
            end=end,
            days=days,
            progress=not args.no_progress,
            weight_budget=budget,
            use_monthly=not args.no_monthly,
            cache_archives=args.keep_archives,
        )
    for flag, value in (("--days", args.days), ("--start", args.start), ("--end", args.end)):
        if value is not None:
            raise SettingError(f"{flag}: only with --mode historical")
    live_seconds = (
        parse_seconds(args.live_seconds, "--live-seconds") if args.live_seconds is not None else None
    )
    return run_live(
        settings,
        symbols,
        live_seconds=live_seconds,
        redundant=args.redundant,
        weight_budget=budget,
        stale_timeout=parse_seconds(args.stale_timeout, "--stale-timeout"),
    )


def prepare_database(settings: Settings) -> str:
    """Resolve the database and apply the migrations (every writing command does this first)."""
    from microstructure.db import migrate
    from microstructure.db.connect import resolve_database_url

    url = resolve_database_url(settings)
    migrate.upgrade(url)
    return url


def _error(msg: str) -> None:
    print(f"microstructure: error: {msg}", file=sys.stderr)


def run_historical(
    settings: Settings,
    symbols: list[str],
    *,
    start: date | None = None,
    end: date | None = None,
    days: int | None = None,
    progress: bool = True,
    weight_budget: int = DEFAULT_WEIGHT_BUDGET,
    use_monthly: bool = True,
    cache_archives: bool = False,
    writer: Any = None,
) -> int:
    """Migrate, run the historical collector, print its report; the exit code."""
    import aiohttp

    from microstructure.ingest.binance.archives import ArchiveError
    from microstructure.ingest.binance.rest import RestError
    from microstructure.ingest.collectors.trades_historical import (
        HistoricalError,
        collect_aggtrades_historical,
    )

    url = prepare_database(settings)
    try:
        report = asyncio.run(
            collect_aggtrades_historical(
                settings,
                url,
                symbols,
                start,
                end,
                days=days,
                progress=progress,
                writer=writer,
                weight_budget=weight_budget,
                use_monthly=use_monthly,
                cache_archives=cache_archives,
            )
        )
    except HistoricalError as exc:
        _error(str(exc))
        return 2
    except (RestError, ArchiveError) as exc:
        _error(str(exc))
        return 3
    except (aiohttp.ClientError, OSError) as exc:
        _error(f"cannot reach the exchange at {settings.rest_url}: {exc}")
        return 3
    for line in report.summary_lines():
        print(line)
    return 0 if report.ok else 1


def run_live(
    settings: Settings,
    symbols: list[str],
    *,
    live_seconds: float | None,
    redundant: bool,
    weight_budget: int,
    stale_timeout: float = DEFAULT_AGG_STALE_TIMEOUT,
) -> int:
    from microstructure.ingest.binance.rest import RestError
    from microstructure.ingest.collectors.trades_historical import HistoricalError
    from microstructure.ingest.collectors.trades_live import collect_aggtrades_live

    url = prepare_database(settings)
    try:
        report = asyncio.run(
            collect_aggtrades_live(
                settings,
                url,
                symbols,
                live_seconds=live_seconds,
                redundant=redundant,
                weight_budget=weight_budget,
                stale_timeout=stale_timeout,
            )
        )
    except HistoricalError as exc:  # an unknown symbol, refused before connecting
        _error(str(exc))
        return 2
    except RestError as exc:  # a 418 ban (stopped after flushing what it had), or unreachable
        _error(str(exc))
        return 3
    for line in report.summary_lines():
        print(line)
    return 0 if report.ok else 1
