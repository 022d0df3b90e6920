"""`microstructure collect book-depth | market | all`.

Registered into the `collect` group by `add_parsers(collect_subparsers)`; every handler is
`(args, settings) -> exit code` and applies the database migrations first. Exit codes: 0 done;
1 done with refused archives, a failed collector, a symbol of which nothing was stored, or batches
left out of the database (spilled or refused) at exit, the reason on one line; 2 bad arguments/setup;
3 exchange unreachable.
Also runnable alone: `python -m microstructure.ingest.cli_market all --symbol BTCUSDT ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

from microstructure.config import ENV_PREFIX, SettingError, Settings
from microstructure.ingest.cli import (
    add_stale_timeout,
    add_url_options,
    apply_urls,
    parse_day,
    parse_int,
    parse_seconds,
    parse_symbols,
    prepare_database,
)
from microstructure.ingest.collectors.book import BOOK_DEPTH_HELP, DIFF_MAX_LEVELS
from microstructure.ingest.collectors.book_values import LEVELS
from microstructure.ingest.collectors.market import FORCE_ALL_FROM, LIQUIDATION_STREAMS

DEFAULT_OI_INTERVAL = 60.0
DEFAULT_STALE_TIMEOUT = 10.0  # mark price arrives every second, depth every 100-500 ms


def _common(p: argparse.ArgumentParser, *, source: bool, oi: bool) -> None:
    p.add_argument(
        "--symbol",
        action="append",
        required=True,
        metavar="SYMBOL",
        help="contract, e.g. BTCUSDT (repeatable; comma-separated lists accepted)",
    )
    p.add_argument("--mode", default="live", metavar="MODE", help="live (default) | historical")
    p.add_argument("--days", metavar="N", help="historical: the last N complete UTC days")
    p.add_argument("--start", metavar="YYYY-MM-DD", help="historical: first UTC day")
    p.add_argument("--end", metavar="YYYY-MM-DD", help="historical: last UTC day (default: yesterday)")
    if source:
        p.add_argument(
            "--source",
            default="depth20",
            metavar="SOURCE",
            help="live book source: depth20 (default: the <s>@depth20@500ms stream, one row per message) | "
            "diff (a local order book from <s>@depth@100ms and /fapi/v1/depth, top --depth-levels sampled "
            "every 500 ms)",
        )
        p.add_argument(
            "--depth-levels",
            metavar="N",
            help=f"--source diff: levels a side stored per snapshot in book_snapshots (default {LEVELS}, up to "
            f"{DIFF_MAX_LEVELS}, the size of the REST snapshot); the per-snapshot values (imbalances, slopes, "
            f"...) always use the top {LEVELS}",
        )
    add_url_options(p)
    p.add_argument(
        "--live-seconds", metavar="N", help="live: stop after N seconds (default: until SIGINT/SIGTERM)"
    )
    add_stale_timeout(p, DEFAULT_STALE_TIMEOUT)
    if oi:
        p.add_argument(
            "--oi-interval",
            metavar="SECONDS",
            default=str(DEFAULT_OI_INTERVAL),
            help=f"live: seconds between /fapi/v1/openInterest polls (default {DEFAULT_OI_INTERVAL:g})",
        )
        p.add_argument(
            "--liquidations-stream",
            default="auto",
            metavar="WHICH",
            help="live: where liquidations come from: per-symbol (one <s>@forceOrder stream each) | all (the "
            "all-market !forceOrder@arr stream, other symbols' orders ignored) | auto (default: per-symbol "
            f"below {FORCE_ALL_FROM} symbols, all from {FORCE_ALL_FROM} on)",
        )


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add book-depth, market and all to the `collect` subcommands."""
    book = sub.add_parser(
        "book-depth",
        help="order book: live top-20 snapshots (depth20 or local diff book); historical bookDepth bands",
        description="Live mode stores a top-20 order book snapshot every 500 ms per symbol in book_snapshots, "
        "with the per-snapshot values (mid, spread, imbalances, slopes, OFI); with --source diff, "
        "--depth-levels N keeps up to 1000 levels a side (the values still use the top 20). "
        + BOOK_DEPTH_HELP,
    )
    _common(book, source=True, oi=False)
    book.set_defaults(handler=cmd_book_depth)
    market = sub.add_parser(
        "market",
        help="mark price, funding, open interest and liquidations (live or historical)",
        description="Live mode: <s>@markPrice@1s into mark_prices, settled funding rates into funding_rates "
        "(polled when a settlement passes), open interest polled every --oi-interval seconds, liquidations "
        "from <s>@forceOrder or !forceOrder@arr (--liquidations-stream; sampled by the exchange: counts are "
        "lower bounds). Failed polls are retried "
        "and recorded in ingest_events as poll_miss. Historical mode: fundingRate monthly archives and REST, "
        "metrics archives (futures_metrics and open_interest), openInterestHist (last 30 days), 1m "
        "mark/index/premium klines into price_klines.",
    )
    _common(market, source=False, oi=True)
    market.set_defaults(handler=cmd_market)
    every = sub.add_parser(
        "all",
        help="every collector in one process (aggregate trades, book, market data)",
        description="Live mode runs aggregate trades, book snapshots and market data together with one "
        "writer; SIGINT/SIGTERM stops them, flushes every pending batch and exits 0 (1, with the reason, "
        "when a collector failed or stored nothing for a symbol, or batches stayed spilled or were refused). "
        "Historical mode runs "
        "the aggTrades, bookDepth and market-data loaders over the same days.",
    )
    _common(every, source=True, oi=True)
    every.add_argument(
        "--health-port",
        metavar="PORT",
        default=os.environ.get(ENV_PREFIX + "HEALTH_PORT") or None,
        help="live: serve GET /health (JSON, 503 when a stream is silent or batches wait on disk) and "
        f"GET /metrics (Prometheus) on 127.0.0.1:PORT (env {ENV_PREFIX}HEALTH_PORT; default: off)",
    )
    every.set_defaults(handler=cmd_all)


# ---------------------------------------------------------------- argument checks


def _mode(args: argparse.Namespace) -> str:
    mode = (args.mode or "").strip().lower()
    if mode not in ("live", "historical"):
        raise SettingError(f"--mode: expected live or historical, got {args.mode!r}")
    return mode


def _days(args: argparse.Namespace) -> tuple[date | None, date | None, int | None]:
    if args.live_seconds is not None:
        raise SettingError("--live-seconds: only with --mode live")
    if args.days is not None:
        if args.start or args.end:
            raise SettingError("--days: give either --days N or --start/--end, not both")
        return None, None, parse_int(args.days, "--days", 1)
    if not args.start:
        raise SettingError("--start: historical mode needs --start YYYY-MM-DD (and --end) or --days N")
    start = parse_day(args.start, "--start")
    end = parse_day(args.end, "--end") if args.end else None
    if end is not None and end < start:
        raise SettingError(f"--end: expected a day on or after --start {start}, got {args.end!r}")
    return start, end, None


def _live_args(args: argparse.Namespace) -> tuple[float | None, float]:
    """(--live-seconds or None, --stale-timeout)"""
    for flag, value in (("--days", args.days), ("--start", args.start), ("--end", args.end)):
        if value is not None:
            raise SettingError(f"{flag}: only with --mode historical")
    live_seconds = (
        parse_seconds(args.live_seconds, "--live-seconds") if args.live_seconds is not None else None
    )
    return live_seconds, parse_seconds(args.stale_timeout, "--stale-timeout")


def _source(args: argparse.Namespace) -> str:
    source = (getattr(args, "source", None) or "depth20").strip().lower()
    if source not in ("depth20", "diff"):
        raise SettingError(f"--source: expected depth20 or diff, got {args.source!r}")
    return source


def _liquidations(args: argparse.Namespace) -> str:
    value = (args.liquidations_stream or "").strip().lower()
    if value not in LIQUIDATION_STREAMS:
        raise SettingError(
            f"--liquidations-stream: expected per-symbol, all or auto, got {args.liquidations_stream!r}"
        )
    return value


def _depth_levels(args: argparse.Namespace, source: str, mode: str) -> int:
    value = getattr(args, "depth_levels", None)
    if value is None:
        return LEVELS
    if source != "diff" or mode != "live":
        raise SettingError("--depth-levels: only with --mode live --source diff (depth20 sends 20 levels)")
    return parse_int(value, "--depth-levels", LEVELS, DIFF_MAX_LEVELS)


def _oi(args: argparse.Namespace) -> float:
    return parse_seconds(getattr(args, "oi_interval", DEFAULT_OI_INTERVAL), "--oi-interval")


def _run(coro_factory: Any, settings: Settings, symbols: Sequence[str]) -> Any:
    """asyncio.run the collector once exchangeInfo lists every symbol (an unknown one is exit code 2
    before anything starts: live streams of it would only stay silent); exchange failures become exit
    code 3 with one line."""
    import aiohttp

    from microstructure.ingest.binance.archives import ArchiveError
    from microstructure.ingest.binance.rest import BinanceRest, RestError
    from microstructure.ingest.collectors.trades_historical import UnknownSymbols, check_symbols

    async def checked() -> Any:
        async with BinanceRest(settings.rest_url) as rest:
            await check_symbols(rest, symbols)
        return await coro_factory()

    try:
        return asyncio.run(checked())
    except UnknownSymbols as exc:
        print(f"microstructure: error: {exc}", file=sys.stderr)
        return 2
    except (RestError, ArchiveError) as exc:
        print(f"microstructure: error: {exc}", file=sys.stderr)
        return 3
    except (aiohttp.ClientError, OSError) as exc:
        print(
            f"microstructure: error: cannot reach the exchange at {settings.rest_url}: {exc}", file=sys.stderr
        )
        return 3


def _finish(report: Any) -> int:
    if isinstance(report, int):
        return report
    for line in report.summary_lines():
        print(line, flush=True)
    if getattr(report, "ok", True):
        return 0
    problems = report.problems() if hasattr(report, "problems") else []
    print(f"microstructure: error: {'; '.join(problems) or 'see the summary above'}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- handlers


def cmd_book_depth(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.ingest.collectors.book import collect_book_historical, collect_book_live

    mode = _mode(args)
    symbols = parse_symbols(args.symbol)
    source = _source(args)
    depth_levels = _depth_levels(args, source, mode)
    apply_urls(args, settings)
    if mode == "historical":
        if args.source and source != "depth20":
            raise SettingError("--source: only with --mode live (historical bookDepth has no levels)")
        start, end, days = _days(args)
        url = prepare_database(settings)
        return _finish(
            _run(
                lambda: collect_book_historical(settings, url, symbols, start, end, days=days),
                settings,
                symbols,
            )
        )
    live_seconds, stale_timeout = _live_args(args)
    url = prepare_database(settings)

    async def live() -> Any:
        stop = _signal_stop()
        return await collect_book_live(
            settings, url, symbols, source=source, live_seconds=live_seconds, stop_event=stop,
            stale_timeout=stale_timeout, depth_levels=depth_levels,
        )  # fmt: skip

    return _finish(_run(live, settings, symbols))


def cmd_market(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.ingest.collectors.market import collect_market_historical, collect_market_live

    mode = _mode(args)
    symbols = parse_symbols(args.symbol)
    oi_interval = _oi(args)
    liquidations = _liquidations(args)
    apply_urls(args, settings)
    if mode == "historical":
        start, end, days = _days(args)
        url = prepare_database(settings)
        return _finish(
            _run(
                lambda: collect_market_historical(settings, url, symbols, start, end, days=days),
                settings,
                symbols,
            )
        )
    live_seconds, stale_timeout = _live_args(args)
    url = prepare_database(settings)

    async def live() -> Any:
        stop = _signal_stop()
        return await collect_market_live(
            settings, url, symbols, live_seconds=live_seconds, oi_interval=oi_interval, stop_event=stop,
            stale_timeout=stale_timeout, liquidations_stream=liquidations,
        )  # fmt: skip

    return _finish(_run(live, settings, symbols))


def cmd_all(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.ingest.collectors.all import collect_all

    mode = _mode(args)
    symbols = parse_symbols(args.symbol)
    source = _source(args)
    depth_levels = _depth_levels(args, source, mode)
    oi_interval = _oi(args)
    liquidations = _liquidations(args)
    apply_urls(args, settings)
    start = end = None
    days = None
    live_seconds = None
    stale_timeout = DEFAULT_STALE_TIMEOUT
    if mode == "historical":
        start, end, days = _days(args)
    else:
        live_seconds, stale_timeout = _live_args(args)
    health_port = None
    if args.health_port is not None:
        health_port = parse_int(args.health_port, "--health-port", 0, 65535)
        if mode != "live":
            raise SettingError("--health-port: only with --mode live")
    url = prepare_database(settings)
    return _finish(
        _run(
            lambda: collect_all(
                settings,
                url,
                symbols,
                mode=mode,
                live_seconds=live_seconds,
                book_source=source,
                depth_levels=depth_levels,
                oi_interval=oi_interval,
                start=start,
                end=end,
                days=days,
                health_port=health_port,
                stale_timeout=stale_timeout,
                liquidations_stream=liquidations,
            ),
            settings,
            symbols,
        )
    )


def _signal_stop() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (live runs stop cleanly and flush)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop
