"""Every `microstructure collect` sub-command: aggtrades, book-depth, market and all.

Each handler is `(args, settings) -> exit code` and applies the database migrations first.
Exit codes (README, "Exit codes of every command"): 0 done; 1 incomplete, the reasons on one line
(a refused or failed day or archive, a REST request that kept failing after every retry, an
exchange that cannot be reached or stopped answering, gaps left, a failed collector, a symbol of
which nothing was stored, batches left out of the database); 2 bad arguments/setup, or an exchange
URL that is not Binance's API, before anything ran; 3 only for an IP ban (HTTP 418); 130 / 143 a
historical run stopped by SIGINT / SIGTERM (what it stored is kept: run it again to continue).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from microstructure.args import SYMBOL_RE, parse_day_range, parse_int, parse_seconds, parse_symbols
from microstructure.config import ENV_PREFIX, SettingError, Settings, check_home
from microstructure.features_sql.refresher import BACKFILL_INTERVAL, DEFAULT_FEATURES_INTERVAL
from microstructure.ingest.collectors.book import BOOK_DEPTH_HELP, DIFF_MAX_LEVELS
from microstructure.ingest.collectors.book_values import LEVELS
from microstructure.ingest.collectors.group import DEFAULT_LEASE_TIMEOUT
from microstructure.ingest.collectors.market import FORCE_ALL_FROM, LIQUIDATION_STREAMS
from microstructure.ingest.collectors.universe import DEFAULT_UNIVERSE_INTERVAL
from microstructure.retention import DEFAULT_INTERVAL as DEFAULT_RETENTION_INTERVAL

DEFAULT_WEIGHT_BUDGET: int | None = None  # auto: 80 % of the REQUEST_WEIGHT limit exchangeInfo announces
DEFAULT_AGG_STALE_TIMEOUT = 30.0  # a quiet symbol's aggTrade stream may be silent for a while
DEFAULT_OI_INTERVAL = 60.0
DEFAULT_STALE_TIMEOUT = 10.0  # mark price arrives every second, depth every 100-500 ms


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


def add_symbol_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--symbol",
        action="append",
        metavar="SYMBOL",
        help="contract, e.g. BTCUSDT (repeatable; comma-separated lists accepted); or --all-symbols",
    )


def add_follow_options(p: argparse.ArgumentParser) -> None:
    """--all-symbols and its filters, --group and its lease (checked by follow_options)."""
    p.add_argument(
        "--all-symbols",
        action="store_true",
        help="every TRADING USD-M perpetual in exchangeInfo instead of --symbol; live, re-read every "
        "--universe-interval: a listing is added, a delisted or settling contract stops (said once); "
        "historical: the universe at start",
    )
    p.add_argument(
        "--quote", metavar="ASSET", help="--all-symbols: only contracts quoted in ASSET, e.g. USDT"
    )
    p.add_argument(
        "--top", metavar="N", help="--all-symbols: the N largest by 24 h quote volume (/fapi/v1/ticker/24hr)"
    )
    p.add_argument("--exclude", metavar="S1,S2", help="--all-symbols: leave these contracts out")
    p.add_argument(
        "--universe-interval",
        metavar="SECONDS",
        help=f"--all-symbols, live: seconds between reads of the universe (default {DEFAULT_UNIVERSE_INTERVAL:g})",
    )
    p.add_argument(
        "--group",
        metavar="NAME",
        help="live: collectors started with the same NAME against one database split the symbols between "
        'them (leases in the database; README, "Collector group")',
    )
    p.add_argument(
        "--lease-timeout",
        metavar="SECONDS",
        help=f"--group: a member silent for this long loses its symbols to the others (default "
        f"{DEFAULT_LEASE_TIMEOUT:g})",
    )
    p.add_argument(
        "--redundancy",
        metavar="N",
        help="--group: members collecting each symbol at once (default 1; 2: no hole when one dies)",
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
        "Exit codes: 0 done, 1 done with refused days (checksum mismatch; an archive with no valid row or "
        "more than 1 % of its rows malformed) or gaps left, 2 bad arguments/setup, "
        "3 exchange refused or unreachable (e.g. IP ban).",
    )
    add_symbol_option(agg)
    agg.add_argument("--mode", default="historical", metavar="MODE", help="historical (default) | live")
    agg.add_argument(
        "--days",
        metavar="N",
        help="historical: the last N complete UTC days plus today so far (exchange clock)",
    )
    agg.add_argument("--start", metavar="YYYY-MM-DD", help="historical: first UTC day")
    agg.add_argument("--end", metavar="YYYY-MM-DD", help="historical: last UTC day (default: today)")
    add_url_options(agg)
    add_follow_options(agg)
    agg.add_argument(
        "--live-seconds", metavar="N", help="live: stop after N seconds (default: run until stopped)"
    )
    add_stale_timeout(agg, DEFAULT_AGG_STALE_TIMEOUT)
    agg.add_argument("--redundant", action="store_true", help="live: two connections per stream, merged")
    agg.add_argument(
        "--weight-budget",
        metavar="N",
        default="auto",
        help="REST request weight per minute to stay under (default auto: 80%% of the REQUEST_WEIGHT limit in "
        "exchangeInfo's rateLimits, 2400 on Binance; a number is capped at that limit)",
    )
    agg.add_argument("--no-progress", action="store_true", help="no progress bars")
    agg.add_argument("--no-monthly", action="store_true", help="historical: daily archives only")
    agg.add_argument(
        "--keep-archives", action="store_true", help="historical: keep verified archives under HOME/archives"
    )
    agg.set_defaults(handler=cmd_collect_aggtrades)
    # book-depth, market and all join the same `collect` group
    _add_book_market_all(sub)


def _common(p: argparse.ArgumentParser, *, source: bool, oi: bool) -> None:
    add_symbol_option(p)
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
            "at each 500 ms boundary of the exchange's clock: the last update before it, so two collectors "
            "on one stream store the same snapshots)",
        )
        p.add_argument(
            "--depth-levels",
            metavar="N",
            help=f"--source diff: levels a side stored per snapshot in book_snapshots (default {LEVELS}, up to "
            f"{DIFF_MAX_LEVELS}, the size of the REST snapshot); the per-snapshot values (imbalances, slopes, "
            f"...) always use the top {LEVELS}",
        )
    add_url_options(p)
    add_follow_options(p)
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


def _add_book_market_all(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
        "(polled when a settlement passes), open interest polled every --oi-interval seconds (at the start, "
        "openInterestHist fills the 5-minute values since the last stored one, or since today's midnight), "
        "liquidations "
        "from <s>@forceOrder or !forceOrder@arr (--liquidations-stream; sampled by the exchange: counts are "
        "lower bounds). Failed polls are retried "
        "and recorded in ingest_events as poll_miss. Historical mode: fundingRate monthly archives and REST, "
        "metrics archives (futures_metrics and open_interest), openInterestHist (last 30 days: days without a "
        "metrics archive and, when the range ends yesterday, today up to now), 1m "
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
        help="live: serve GET /health (JSON; 503 with the reasons when a stream is silent, no batch has "
        "committed for 15 s while batches wait, batches wait on disk, or the spill folder is nearly full) and "
        f"GET /metrics (Prometheus) on 127.0.0.1:PORT (env {ENV_PREFIX}HEALTH_PORT; default: off)",
    )
    every.add_argument(
        "--features-interval",
        metavar="SECONDS",
        default=str(DEFAULT_FEATURES_INTERVAL),
        help="live: materialise the 1m/5m/15m features of what was written every SECONDS (default "
        f"{DEFAULT_FEATURES_INTERVAL:g}; 0: not during the run, only at the end). Historical mode refreshes "
        f"the days loaded while the next ones load (every {BACKFILL_INTERVAL:g} s unless SECONDS is more than "
        "the default) and what is left at the end.",
    )
    every.add_argument(
        "--reconcile-interval",
        metavar="SECONDS",
        default="600",
        help="live: every SECONDS, check the finished trade days of the last 3 stored days against their "
        "daily archive once Binance publishes it (the next morning; until then the day is retried each "
        "round) and heal them as `microstructure reconcile` does; a re-uploaded archive (checksum changed) "
        "is reconciled again, and those days' bookDepth and metrics archives are loaded when published or "
        "replaced (default 600; 0: off)",
    )
    every.add_argument(
        "--retention-keep-days",
        metavar="N",
        help="live: every --retention-interval, drop raw days older than N days that the Parquet export "
        "already holds (as `microstructure retention --keep-days N`, never forced; env "
        f"{ENV_PREFIX}RETENTION_KEEP_DAYS; default: off)",
    )
    every.add_argument(
        "--retention-interval",
        metavar="SECONDS",
        default=str(DEFAULT_RETENTION_INTERVAL),
        help=f"live: seconds between retention rounds (default {DEFAULT_RETENTION_INTERVAL:g})",
    )
    every.set_defaults(handler=cmd_all)


# ---------------------------------------------------------------- argument checks


def add_stale_timeout(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument(
        "--stale-timeout",
        metavar="SECONDS",
        default=str(default),
        help=f"live: a connection with no message for this long is made again (default {default:g})",
    )


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
        return None, None, parse_int(args.days, "--days", 0)  # as collect aggtrades: 0 = today so far
    if not args.start:
        raise SettingError("--start: historical mode needs --start YYYY-MM-DD (and --end) or --days N")
    return *parse_day_range(args.start, args.end), None


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


@dataclass
class Follow:
    """--symbol or --all-symbols, and --group: what the run collects and whether that set can change."""

    symbols: list[str] | None  # None with --all-symbols
    universe: Any = None  # dynamic.UniverseOptions
    group: Any = None  # dynamic.GroupOptions

    @property
    def dynamic(self) -> bool:
        return self.universe is not None or self.group is not None


GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
QUOTE_RE = re.compile(r"^[A-Z0-9]{2,12}$")


def follow_options(args: argparse.Namespace, mode: str) -> Follow:
    """--symbol / --all-symbols (with --quote, --top, --exclude, --universe-interval) and --group (with
    --lease-timeout, --redundancy): one SettingError line (exit 2) for a bad or misplaced value."""
    from microstructure.ingest.collectors.dynamic import GroupOptions, UniverseOptions
    from microstructure.ingest.collectors.universe import UniverseFilter

    if args.all_symbols and args.symbol:
        raise SettingError("--all-symbols: give either --symbol or --all-symbols, not both")
    if not args.all_symbols:
        if not args.symbol:
            raise SettingError("--symbol: expected a contract name like BTCUSDT (or --all-symbols)")
        for flag, value in (("--quote", args.quote), ("--top", args.top), ("--exclude", args.exclude),
                            ("--universe-interval", args.universe_interval)):  # fmt: skip
            if value is not None:
                raise SettingError(f"{flag}: only with --all-symbols")
    for flag, value in (("--lease-timeout", args.lease_timeout), ("--redundancy", args.redundancy)):
        if value is not None and args.group is None:
            raise SettingError(f"{flag}: only with --group NAME")
    group = None
    if args.group is not None:
        if mode != "live":
            raise SettingError(
                "--group: only with --mode live (a historical load is split with --symbol lists; it is "
                "idempotent, so loads may overlap)"
            )
        if not GROUP_NAME_RE.fullmatch(args.group):
            raise SettingError(
                f"--group: expected a name of letters, digits, '_', '.' or '-' (up to 63), got {args.group!r}"
            )
        lease = DEFAULT_LEASE_TIMEOUT
        if args.lease_timeout is not None:
            lease = parse_seconds(args.lease_timeout, "--lease-timeout")
            if lease < 1:
                raise SettingError(
                    f"--lease-timeout: expected a number of seconds >= 1, got {args.lease_timeout!r}"
                )
        redundancy = 1 if args.redundancy is None else parse_int(args.redundancy, "--redundancy", 1, 16)
        group = GroupOptions(args.group, lease, redundancy)
    if not args.all_symbols:
        return Follow(parse_symbols(args.symbol), None, group)
    quote = None
    if args.quote is not None:
        quote = args.quote.strip().upper()
        if not QUOTE_RE.fullmatch(quote):
            raise SettingError(f"--quote: expected an asset name like USDT, got {args.quote!r}")
    top = None if args.top is None else parse_int(args.top, "--top", 1)
    exclude: set[str] = set()
    for part in (args.exclude or "").split(","):
        sym = part.strip().upper()
        if sym and not SYMBOL_RE.fullmatch(sym):
            raise SettingError(
                f"--exclude: expected contract names like BTCUSDT,ETHUSDT, got {part.strip()!r}"
            )
        if sym:
            exclude.add(sym)
    if args.universe_interval is not None and mode != "live":
        raise SettingError(
            "--universe-interval: only with --mode live (historical loads the universe at start)"
        )
    interval = (
        DEFAULT_UNIVERSE_INTERVAL
        if args.universe_interval is None
        else parse_seconds(args.universe_interval, "--universe-interval")
    )
    return Follow(None, UniverseOptions(UniverseFilter(quote, top, frozenset(exclude)), interval), group)


def resolve_symbols(follow: Follow, settings: Settings, weight_budget: int | None = None) -> list[str]:
    """The symbols of a run that cannot follow a changing set (historical): --symbol, or the
    universe as it is now (an unreachable exchange: its exit code, by SystemExit)."""
    if follow.symbols is not None:
        return follow.symbols
    from microstructure.ingest.collectors.dynamic import initial_universe

    try:
        symbols = run_async(initial_universe(settings, follow.universe, weight_budget))
    except BaseException as exc:
        code = exchange_exit(exc, settings)
        if code is None:
            raise
        raise SystemExit(code) from None
    if not symbols:
        raise SettingError(f"--all-symbols: no contract is {follow.universe.filter.describe()}")
    print(f"universe: {follow.universe.filter.describe()}: {len(symbols)} symbols", flush=True)
    return symbols


def run_following(
    settings: Settings,
    url: str,
    follow: Follow,
    make_collect: Any,
    *,
    live_seconds: float | None,
    weight_budget: int | None = None,
    features_interval: float | None = None,
    retention_keep_days: int | None = None,
    retention_interval: float = DEFAULT_RETENTION_INTERVAL,
) -> int:
    """A live run whose set changes (`--all-symbols`, `--group`): `make_collect(rest, handed_over)(symbols,
    stop)` is one run of the collector on the process's REST client, started and stopped by the live set as
    symbols come and go (dynamic.run_dynamic).
    The features refresher and retention run once for the process, beside the set."""
    from microstructure.ingest.collectors.dynamic import run_dynamic

    async def go() -> Any:
        stop = _signal_stop()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(live_seconds, stop.set) if live_seconds is not None else None
        background = asyncio.Event()
        tasks = []
        if features_interval is not None and features_interval < 1e9:
            from microstructure.features_sql.refresher import run_refresher

            tasks.append(asyncio.create_task(run_refresher(url, background, features_interval)))
        if retention_keep_days is not None:
            from microstructure.retention import run_scheduled

            tasks.append(
                asyncio.create_task(run_scheduled(url, retention_keep_days, background, retention_interval))
            )
        try:
            return await run_dynamic(
                settings, url, make_collect, stop, symbols=follow.symbols, universe=follow.universe,
                group=follow.group, weight_budget=weight_budget,
            )  # fmt: skip
        finally:
            if timer is not None:
                timer.cancel()
            background.set()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await t

    code = _finish(_run(go, settings, follow.symbols or []))
    if features_interval is not None and code in (0, 1):
        for line in refresh_features(url):
            print(line)
    return code


def _oi(args: argparse.Namespace) -> float:
    return parse_seconds(getattr(args, "oi_interval", DEFAULT_OI_INTERVAL), "--oi-interval")


# ---------------------------------------------------------------- handlers: aggtrades


def cmd_collect_aggtrades(args: argparse.Namespace, settings: Settings) -> int:
    mode = (args.mode or "").strip().lower()
    if mode not in ("historical", "live"):
        raise SettingError(f"--mode: expected historical or live, got {args.mode!r}")
    follow = follow_options(args, mode)
    budget = _weight_budget(args.weight_budget)
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
            start, end = parse_day_range(args.start, args.end)
        else:
            raise SettingError("--start: historical mode needs --start YYYY-MM-DD (and --end) or --days N")
        return run_historical(
            settings,
            resolve_symbols(follow, settings, budget),
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
    stale_timeout = parse_seconds(args.stale_timeout, "--stale-timeout")
    if follow.dynamic:
        from microstructure.ingest.collectors.trades_live import collect_aggtrades_live

        url = prepare_database(settings)

        def collect(rest: Any, handed_over: Any) -> Any:
            return lambda symbols, stop: collect_aggtrades_live(
                settings, url, symbols, stop_event=stop, redundant=args.redundant, rest=rest,
                stale_timeout=stale_timeout, handed_over=handed_over,
            )  # fmt: skip

        return run_following(settings, url, follow, collect, live_seconds=live_seconds, weight_budget=budget)
    return run_live(
        settings,
        follow.symbols or [],
        live_seconds=live_seconds,
        redundant=args.redundant,
        weight_budget=budget,
        stale_timeout=stale_timeout,
    )


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM (run_async(..., interruptible=True)); `code` 130 or 143."""

    def __init__(self, signame: str, code: int) -> None:
        self.signame, self.code = signame, code
        super().__init__(
            f"stopped by {signame}: what was stored before it is kept (days checkpointed, the writer's "
            "batches flushed or in spill files for the next start); run the same command again to continue"
        )


async def _interruptible(coro: Any) -> Any:
    """Await `coro`; SIGINT/SIGTERM cancel it (its clean-ups run: the writer flushes, bulk tables are
    dropped) and raise Interrupted instead of a traceback or a silent exit."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    got: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if not got and task is not None:
            got.append(sig)
            task.cancel()

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await coro
    except asyncio.CancelledError:
        if got:
            raise Interrupted(got[0].name, 128 + int(got[0])) from None
        raise
    finally:
        for sig in sigs:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


def run_async(coro: Any, *, interruptible: bool = False) -> Any:
    """asyncio.run on uvloop where it is installed (the live hot path spends about half the CPU
    of the standard loop there: BENCHMARKS.md), else on the standard loop. `interruptible`: SIGINT
    and SIGTERM stop the run cleanly with Interrupted (historical runs; live ones stop by their own
    stop event and report)."""
    if interruptible:
        coro = _interruptible(coro)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _weight_budget(value: str | None) -> int | None:
    """--weight-budget: None for auto (from exchangeInfo), else an integer >= 20."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    return parse_int(value, "--weight-budget", 20)


def prepare_database(settings: Settings) -> str:
    """Resolve the database and apply the migrations (every writing command does this first)."""
    from microstructure.db import migrate
    from microstructure.db.connect import resolve_database_url

    check_home(settings.home)  # spill files live there: a bad folder is one line, not a later traceback
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
    weight_budget: int | None = DEFAULT_WEIGHT_BUDGET,
    use_monthly: bool = True,
    cache_archives: bool = False,
    writer: Any = None,
) -> int:
    """Migrate, run the historical collector with the feature refresher beside it (a loaded day's
    features are materialised while the next day loads; what is left once more at the end, before
    the report), print its report; the exit code."""
    from microstructure.features_sql.refresher import refreshing_alongside
    from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

    url = prepare_database(settings)

    async def load() -> tuple[Any, Any]:
        async with refreshing_alongside(url) as refreshed:
            report = await collect_aggtrades_historical(
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
        return report, refreshed

    try:
        report, refreshed = run_async(load(), interruptible=True)
    except BaseException as exc:
        code = exchange_exit(exc, settings)
        if code is None:
            raise
        return code
    features = refreshed.report.summary_lines()
    if refreshed.error is not None:  # the load itself is done and kept; the next refresh picks it up
        _refresh_failed(refreshed.error)
        features = []
    for line in [*report.summary_lines(), *features]:
        print(line)
    if not report.ok:
        _error("; ".join(report.problems()))
    return 0 if report.ok and features else 1


def exchange_exit(exc: BaseException, settings: Settings) -> int | None:
    """The exit code (after its one stderr line) of what ended a collector run, or None when it is
    not one of these (a bug: its traceback is wanted). 2: refused before anything ran (an unknown
    symbol, a bad range, a URL that is not Binance's API); 3: an IP ban only; 1: the exchange cannot
    be reached or kept failing (after every retry); 130/143: SIGINT/SIGTERM."""
    import aiohttp

    from microstructure.ingest.binance.archives import ArchiveError
    from microstructure.ingest.binance.rest import IpBanned, NotAnExchange, RestError, Unreachable
    from microstructure.ingest.collectors.trades_historical import HistoricalError

    if isinstance(exc, Interrupted):
        _error(str(exc))
        return exc.code
    if isinstance(exc, HistoricalError | NotAnExchange):
        _error(str(exc))
        return 2
    if isinstance(exc, IpBanned):
        _error(str(exc))
        return 3
    if isinstance(exc, Unreachable):
        _error(
            f"cannot reach the exchange at {settings.rest_url}: {exc}; what was stored is kept, run again to continue"
        )
        return 1
    if isinstance(exc, RestError | ArchiveError):
        _error(
            f"the exchange at {settings.rest_url} kept failing: {exc}; what was stored is kept, run again to continue"
        )
        return 1
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        _error(
            f"cannot reach the exchange at {settings.rest_url}: {why}; what was stored is kept, run again to continue"
        )
        return 1
    return None


def refresh_features(url: str) -> list[str]:
    """Materialise the features of everything written so far (what a historical load does before it
    reports); its summary line, or [] after printing why it failed."""
    from microstructure.features_sql.refresher import refresh_once

    try:
        return run_async(refresh_once(url)).summary_lines()
    except Exception as exc:  # the load itself is done and kept; the next refresh picks it up
        _refresh_failed(exc)
        return []


def _refresh_failed(exc: BaseException) -> None:
    _error(f"feature refresh failed (run `microstructure features refresh`): {type(exc).__name__}: {exc}")


def run_live(
    settings: Settings,
    symbols: list[str],
    *,
    live_seconds: float | None,
    redundant: bool,
    weight_budget: int | None,
    stale_timeout: float = DEFAULT_AGG_STALE_TIMEOUT,
) -> int:
    from microstructure.ingest.collectors.trades_live import collect_aggtrades_live

    url = prepare_database(settings)
    try:
        report = run_async(
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
    except BaseException as exc:  # an unknown symbol, not an exchange, a 418 ban, unreachable
        code = exchange_exit(exc, settings)
        if code is None:
            raise
        return code
    for line in report.summary_lines():
        print(line)
    return 0 if report.ok else 1


# ---------------------------------------------------------------- handlers: book-depth, market, all


def _run(coro_factory: Any, settings: Settings, symbols: Sequence[str], *, historical: bool = False) -> Any:
    """asyncio.run the collector once exchangeInfo lists every symbol (an unknown one is exit code 2
    before anything starts: live streams of it would only stay silent); what ends it early becomes
    its exit code with one line (exchange_exit). A historical run stops cleanly on SIGINT/SIGTERM."""
    from microstructure.ingest.binance.rest import BinanceRest
    from microstructure.ingest.collectors.trades_historical import check_symbols

    async def checked() -> Any:
        if symbols:  # (--all-symbols: the universe is what exchangeInfo lists)
            async with BinanceRest(settings.rest_url, retry_malformed=historical) as rest:
                await check_symbols(rest, symbols)
        return await coro_factory()

    try:
        return run_async(checked(), interruptible=historical)
    except BaseException as exc:
        code = exchange_exit(exc, settings)
        if code is None:
            raise
        return code


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
    follow = follow_options(args, mode)
    source = _source(args)
    depth_levels = _depth_levels(args, source, mode)
    apply_urls(args, settings)
    if mode == "historical":
        if args.source and source != "depth20":
            raise SettingError("--source: only with --mode live (historical bookDepth has no levels)")
        start, end, days = _days(args)
        symbols = resolve_symbols(follow, settings)
        url = prepare_database(settings)
        return _historical_then_features(
            lambda: collect_book_historical(settings, url, symbols, start, end, days=days),
            settings,
            url,
            symbols,
        )  # the bands feed the book-depth features
    live_seconds, stale_timeout = _live_args(args)
    url = prepare_database(settings)
    if follow.dynamic:

        def collect(rest: Any, handed_over: Any) -> Any:
            return lambda symbols, stop: collect_book_live(
                settings, url, symbols, source=source, stop_event=stop, stale_timeout=stale_timeout,
                depth_levels=depth_levels, rest=rest,
            )  # fmt: skip

        return run_following(settings, url, follow, collect, live_seconds=live_seconds)
    symbols = follow.symbols or []

    async def live() -> Any:
        stop = _signal_stop()
        return await collect_book_live(
            settings, url, symbols, source=source, live_seconds=live_seconds, stop_event=stop,
            stale_timeout=stale_timeout, depth_levels=depth_levels,
        )  # fmt: skip

    return _finish(_run(live, settings, symbols))


def _historical_then_features(go: Any, settings: Settings, url: str, symbols: list[str]) -> int:
    """Run a historical load, then refresh the features of what it loaded (and print the refresh):
    exit 1 when the load succeeded but the refresh did not."""
    code = _finish(_run(go, settings, symbols, historical=True))
    features = refresh_features(url) if code in (0, 1) else []
    for line in features:
        print(line)
    return code if features or code != 0 else 1


def cmd_market(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.ingest.collectors.market import collect_market_historical, collect_market_live

    mode = _mode(args)
    follow = follow_options(args, mode)
    oi_interval = _oi(args)
    liquidations = _liquidations(args)
    apply_urls(args, settings)
    if mode == "historical":
        start, end, days = _days(args)
        symbols = resolve_symbols(follow, settings)
        url = prepare_database(settings)
        return _historical_then_features(
            lambda: collect_market_historical(settings, url, symbols, start, end, days=days),
            settings,
            url,
            symbols,
        )  # open interest, klines and funding feed the features
    live_seconds, stale_timeout = _live_args(args)
    url = prepare_database(settings)
    if follow.dynamic:

        def collect(rest: Any, handed_over: Any) -> Any:
            return lambda symbols, stop: collect_market_live(
                settings, url, symbols, oi_interval=oi_interval, stop_event=stop, stale_timeout=stale_timeout,
                liquidations_stream=liquidations, rest=rest,
            )  # fmt: skip

        return run_following(settings, url, follow, collect, live_seconds=live_seconds)
    symbols = follow.symbols or []

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
    follow = follow_options(args, mode)
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
    features_interval = _features_interval(args.features_interval)
    reconcile_interval = _reconcile_interval(args.reconcile_interval)
    retention_keep_days, retention_interval = _retention(args, settings, mode)
    if health_port:
        _check_port_free(health_port)
    if follow.dynamic and mode == "live":
        if health_port is not None:
            raise SettingError(
                "--health-port: not yet with --group or --all-symbols (each run of the set has its own)"
            )
        url = prepare_database(settings)

        def collect(rest: Any, handed_over: Any) -> Any:
            return lambda symbols, stop: collect_all(
                settings, url, symbols, mode="live", book_source=source, depth_levels=depth_levels,
                oi_interval=oi_interval, stop_event=stop, handle_signals=False, stale_timeout=stale_timeout,
                liquidations_stream=liquidations, features_interval=None, reconcile_interval=None, rest=rest,
                handed_over=handed_over,
            )  # fmt: skip

        return run_following(
            settings, url, follow, collect, live_seconds=live_seconds, features_interval=features_interval,
            retention_keep_days=retention_keep_days, retention_interval=retention_interval,
        )  # fmt: skip
    symbols = resolve_symbols(follow, settings)
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
                features_interval=features_interval,
                retention_keep_days=retention_keep_days,
                retention_interval=retention_interval,
                reconcile_interval=reconcile_interval,
            ),
            settings,
            symbols,
            historical=mode == "historical",
        )
    )


def _check_port_free(port: int) -> None:
    """--health-port must be free on 127.0.0.1 before anything starts."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SettingError(
                f"--health-port {port}: 127.0.0.1:{port} cannot be used ({exc.strerror or exc})"
            ) from None


def _retention(args: argparse.Namespace, settings: Settings, mode: str) -> tuple[int | None, float]:
    """--retention-keep-days (default: the setting, live only) and --retention-interval."""
    interval = parse_seconds(args.retention_interval, "--retention-interval")
    if args.retention_keep_days is None:
        return (settings.retention_keep_days if mode == "live" else None), interval
    if mode != "live":
        raise SettingError("--retention-keep-days: only with --mode live (run `microstructure retention`)")
    return parse_int(args.retention_keep_days, "--retention-keep-days", 1, 100_000), interval


def _features_interval(value: str) -> float:
    """--features-interval: seconds between live refreshes; 0 means only the final one."""
    try:
        x = float(str(value).strip())
    except ValueError:
        x = -1.0
    if not x >= 0:
        raise SettingError(f"--features-interval: expected a number of seconds >= 0, got {value!r}")
    return x if x > 0 else 1e9


def _reconcile_interval(value: str) -> float | None:
    """--reconcile-interval: seconds between live archive reconciliation rounds; 0 means off."""
    try:
        x = float(str(value).strip())
    except ValueError:
        x = -1.0
    if not x >= 0:
        raise SettingError(f"--reconcile-interval: expected a number of seconds >= 0, got {value!r}")
    return x if x > 0 else None


def _signal_stop() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (live runs stop cleanly and flush)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop
