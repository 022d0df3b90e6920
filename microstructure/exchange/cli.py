"""`microstructure exchange serve`: run the local Binance-compatible exchange."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from microstructure.exchange.config import (
    BOOK_DEPTH_BANDS,
    BOOLEAN_STYLES,
    FUNDING_MARK_PRICES,
    HEADER_RULES,
    TIME_UNITS,
    ExchangeConfig,
    FaultConfig,
    FormatConfig,
)


def _symbols(value: str) -> tuple[str, ...]:
    syms = tuple(s.strip().upper() for s in value.split(",") if s.strip())
    if not syms:
        raise argparse.ArgumentTypeError("expected a comma-separated list of symbols")
    return syms


def _days(value: str) -> tuple[str, ...]:
    out = []
    for d in value.split(","):
        d = d.strip()
        if d:
            try:
                datetime.strptime(d, "%Y-%m-%d")
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD dates, got {d!r}") from None
            out.append(d)
    return tuple(out)


def _when(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date/time such as 2022-08-12T12:00, got {value!r}"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subparsers.add_parser(
        "exchange",
        help="local Binance USD-M Futures look-alike (REST, websocket, archives) for demos and tests",
        description="A local exchange speaking Binance USD-M Futures' wire formats: synthetic or replayed data, "
        "fault injection. REST, websockets and data.binance.vision-style archives on one port.",
    )
    sub = group.add_subparsers(dest="exchange_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "serve",
        help="serve until interrupted (SIGINT/SIGTERM), printing the base URL",
        description="Serve REST (/fapi/...), websockets (/ws, /stream) and archives (/data/futures/um/...) "
        "on one port. Point the collectors' REST, websocket and archive base URLs at it.",
    )
    add_serve_options(p)
    p.set_defaults(handler=cmd_serve)


def add_serve_options(p: argparse.ArgumentParser) -> None:
    d = ExchangeConfig()
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=9000, help="port (default 9000; 0 picks a free one)")
    p.add_argument(
        "--symbols", type=_symbols, default=d.symbols, help="comma-separated symbols (default BTCUSDT)"
    )
    p.add_argument(
        "--history-days", type=int, default=d.history_days, help="full days of history before today"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="market seed: same seed and options, same data")
    p.add_argument(
        "--trades-per-day",
        type=int,
        default=d.trades_per_day,
        help=f"aggregate trades per day of a BTCUSDT-like symbol (default {d.trades_per_day}; Binance has ~2.5M)",
    )
    p.add_argument(
        "--live-rate",
        type=float,
        default=None,
        help="aggregate trades per second per symbol from start on (load tests); default: as history",
    )
    p.add_argument(
        "--clock-start",
        type=_when,
        default=None,
        help="exchange time at start, e.g. 2022-08-12T12:00 (default: now); history ends there",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=d.cache_dir,
        help=f"archive and segment cache (default {d.cache_dir})",
    )
    p.add_argument(
        "--weight-limit", type=int, default=d.weight_limit, help="request weight per minute per client"
    )
    p.add_argument(
        "--ban-seconds", type=float, default=d.ban_seconds, help="418 ban length after ignoring a 429"
    )
    p.add_argument(
        "--ping-interval", type=float, default=d.ping_interval, help="seconds between server pings"
    )
    p.add_argument("--pong-timeout", type=float, default=d.pong_timeout, help="seconds to answer a ping")
    p.add_argument("--max-lifetime", type=float, default=d.max_lifetime, help="websocket lifetime in seconds")
    p.add_argument(
        "--max-connections-5m",
        type=int,
        default=d.max_connections_5m,
        help=f"websocket connections a client address may open per 5 minutes; beyond, 429 (default {d.max_connections_5m})",
    )
    u = p.add_argument_group("a market (many contracts)")
    u.add_argument(
        "--universe",
        type=int,
        default=0,
        metavar="N",
        help="list N synthetic perpetuals U0001USDT.. besides --symbols (realistic tick sizes and prices), "
        "each with every stream (aggTrade, depth diffs, depth20, markPrice, forceOrder) and in the "
        "all-market streams !markPrice@arr[@1s] and !forceOrder@arr",
    )
    u.add_argument(
        "--universe-rate",
        type=float,
        default=d.universe_rate,
        metavar="R",
        help=f"aggregate trades per second over the whole universe, Zipf-like: rank k gets 1/k of the "
        f"top's rate (default {d.universe_rate:g})",
    )
    u.add_argument(
        "--listings-per-hour",
        type=float,
        default=0.0,
        help="list this many new universe contracts an hour during the run, and delist as many "
        "(exchangeInfo status SETTLING, streams silent)",
    )
    p.add_argument("--replay-dir", type=Path, default=None, help="serve this folder of real archives instead")
    f = p.add_argument_group("fault injection")
    f.add_argument(
        "--ws-close-after", type=int, default=0, metavar="N", help="drop each websocket after N messages"
    )
    f.add_argument(
        "--ws-close-random", type=float, default=0.0, metavar="S", help="drop websockets after ~S s (random)"
    )
    f.add_argument(
        "--ws-skip-agg-trades",
        type=float,
        default=0.0,
        metavar="P",
        help="lose aggTrade messages with prob. P",
    )
    f.add_argument(
        "--ws-break-depth", type=float, default=0.0, metavar="P", help="lose diff-depth events with prob. P"
    )
    f.add_argument(
        "--ws-malformed", type=float, default=0.0, metavar="P", help="truncate messages with prob. P"
    )
    f.add_argument(
        "--ws-stall-after",
        type=int,
        default=0,
        metavar="N",
        help="after N messages a websocket goes silent (open, answering pings, no data)",
    )
    f.add_argument(
        "--ws-stall-for",
        type=float,
        default=0.0,
        metavar="S",
        help="a stalled websocket sends again after S s (default 0: never)",
    )
    f.add_argument(
        "--rest-429-rate", type=float, default=0.0, metavar="P", help="answer 429 to REST with prob. P"
    )
    f.add_argument(
        "--rest-500-rate", type=float, default=0.0, metavar="P", help="answer HTTP 500 to REST with prob. P"
    )
    f.add_argument(
        "--rest-malformed",
        type=float,
        default=0.0,
        metavar="P",
        help="answer REST with fields removed or the text cut short, with prob. P",
    )
    f.add_argument(
        "--rest-malformed-paths",
        type=lambda v: tuple(x.strip() for x in v.split(",") if x.strip()),
        default=(),
        metavar="PATHS",
        help="/fapi/v1/openInterest,... the paths --rest-malformed applies to (default: all REST)",
    )
    f.add_argument(
        "--rest-delay", type=float, default=0.0, metavar="S", help="delay every HTTP answer by S seconds"
    )
    f.add_argument(
        "--missing-archive-days", type=_days, default=(), metavar="DAYS", help="YYYY-MM-DD,... answer 404"
    )
    f.add_argument(
        "--bad-checksum-days", type=_days, default=(), metavar="DAYS", help="YYYY-MM-DD,... wrong CHECKSUM"
    )
    f.add_argument(
        "--monthly-disorder", action="store_true", help="monthly archives out of order, with duplicates"
    )
    f.add_argument(
        "--withhold-agg-trades",
        type=float,
        default=0.0,
        metavar="P",
        help="withhold a share P of aggregate ids from the websocket and REST (the archives keep them)",
    )
    f.add_argument(
        "--differ-agg-trades",
        type=float,
        default=0.0,
        metavar="P",
        help="a share P of aggregate ids gets a websocket/REST price one tick off the archive's",
    )
    f.add_argument(
        "--reupload-archive-days",
        type=_days,
        default=(),
        metavar="DAYS",
        help="YYYY-MM-DD,... daily archives served re-uploaded (one row changed, new checksum); "
        "POST /admin/reupload?type=T&symbol=S&date=D re-uploads a day's archive at run time",
    )
    v = p.add_argument_group("format variants (what real Binance files and replies do; default: off)")
    v.add_argument(
        "--archive-time-unit",
        choices=TIME_UNITS,
        default="ms",
        help="archive epoch times in ms (13 digits) or us (16 digits, spot archives since 2025)",
    )
    v.add_argument(
        "--archive-headers",
        choices=HEADER_RULES,
        default="auto",
        help="CSV header line: auto (from 2022-08-11 on, as Binance's), always or never",
    )
    v.add_argument(
        "--archive-booleans", choices=BOOLEAN_STYLES, default="lower", help="true/false (lower) or True/False"
    )
    v.add_argument(
        "--archive-extra-column",
        action="store_true",
        help="aggTrades archives carry a trailing is_best_match column (named by the header)",
    )
    v.add_argument(
        "--spot-archive-days",
        type=_days,
        default=(),
        metavar="DAYS",
        help="YYYY-MM-DD,... aggTrades archives in spot format (no header, 8 fields, True/False, us times)",
    )
    v.add_argument(
        "--book-depth-bands",
        type=int,
        choices=BOOK_DEPTH_BANDS,
        default=10,
        help="bookDepth bands: 10 (-5..5, before 2026) or 12 ('-5.00' style with +-0.20, 2026)",
    )
    v.add_argument(
        "--metrics-empty",
        type=float,
        default=0.0,
        metavar="P",
        help="share of metrics rows with empty fields",
    )
    v.add_argument(
        "--archive-decimals",
        type=int,
        default=8,
        metavar="N",
        help="decimals of metrics and bookDepth values (default 8; 16 for more digits than a double holds)",
    )
    v.add_argument(
        "--dated-symbols",
        type=_symbols,
        default=(),
        metavar="SYMBOLS",
        help="symbols served as dated contracts (nextFundingTime 0, estimatedSettlePrice 0, no funding)",
    )
    v.add_argument(
        "--funding-mark-price",
        choices=FUNDING_MARK_PRICES,
        default="value",
        help='markPrice of /fapi/v1/fundingRate rows: value, empty ("") or absent',
    )


def config_from_args(args: argparse.Namespace) -> ExchangeConfig:
    faults = FaultConfig(
        ws_close_after=args.ws_close_after,
        ws_close_random=args.ws_close_random,
        ws_skip_agg_trades=args.ws_skip_agg_trades,
        ws_break_depth=args.ws_break_depth,
        ws_malformed=args.ws_malformed,
        ws_stall_after=args.ws_stall_after,
        ws_stall_for=args.ws_stall_for,
        rest_429_rate=args.rest_429_rate,
        rest_500_rate=args.rest_500_rate,
        rest_malformed=args.rest_malformed,
        rest_malformed_paths=args.rest_malformed_paths,
        rest_delay=args.rest_delay,
        missing_archive_days=args.missing_archive_days,
        bad_checksum_days=args.bad_checksum_days,
        monthly_disorder=args.monthly_disorder,
        withhold_agg_trades=args.withhold_agg_trades,
        differ_agg_trades=args.differ_agg_trades,
        reupload_archive_days=args.reupload_archive_days,
    )
    formats = FormatConfig(
        archive_time_unit=args.archive_time_unit,
        archive_headers=args.archive_headers,
        archive_booleans=args.archive_booleans,
        archive_extra_column=args.archive_extra_column,
        spot_archive_days=args.spot_archive_days,
        book_depth_bands=args.book_depth_bands,
        metrics_empty=args.metrics_empty,
        archive_decimals=args.archive_decimals,
        dated_symbols=args.dated_symbols,
        funding_mark_price=args.funding_mark_price,
    )
    return ExchangeConfig(
        symbols=args.symbols,
        seed=args.seed,
        history_days=args.history_days,
        trades_per_day=args.trades_per_day,
        live_rate=args.live_rate,
        clock_start=args.clock_start,
        host=args.host,
        port=args.port,
        cache_dir=args.cache_dir,
        weight_limit=args.weight_limit,
        ban_seconds=args.ban_seconds,
        ping_interval=args.ping_interval,
        pong_timeout=args.pong_timeout,
        max_lifetime=args.max_lifetime,
        max_connections_5m=args.max_connections_5m,
        universe=args.universe,
        universe_rate=args.universe_rate,
        listings_per_hour=args.listings_per_hour,
        replay_dir=args.replay_dir,
        faults=faults,
        formats=formats,
    )


def cmd_serve(args: argparse.Namespace, settings: Any = None) -> int:
    from microstructure.exchange.server import serve_forever

    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"microstructure exchange: error: {exc}") from None

    async def run() -> None:
        task = asyncio.create_task(serve_forever(config))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return 0
