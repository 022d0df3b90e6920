"""`microstructure demo`: the main job end to end on the embedded default.

1. start (or reuse) the embedded PostgreSQL and apply the schema;
2. start the local Binance-compatible exchange in this process (these machines cannot reach Binance);
3. backfill aggregate trades: past days from the bulk archives, today from REST;
4. collect live for a while: trades, 500 ms book snapshots, mark price, funding, open interest,
   liquidations, over the exchange's real websockets;
5. print what landed: coverage, gaps and lag per symbol, and the schema.

Point it at Binance or another exchange with --exchange-url (then no local exchange is started).
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta

import psycopg

from microstructure.config import Settings
from microstructure.db import migrate
from microstructure.db.cli import print_schema
from microstructure.db.connect import resolve_database_url


def _symbols(text: str) -> list[str]:
    out = [s.strip().upper() for s in text.split(",") if s.strip()]
    if not out or not all(s.isalnum() for s in out):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated symbols like BTCUSDT,ETHUSDT, got {text!r}"
        )
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded default and show what it built",
        description="Start the database and a local exchange, backfill aggregate trades from archives and "
        "REST, collect trades, book snapshots and market data live, then print coverage and the schema.",
    )
    p.add_argument("--symbols", type=_symbols, default=["BTCUSDT", "ETHUSDT"], help="default BTCUSDT,ETHUSDT")
    p.add_argument(
        "--history-days", type=_positive_int, default=2, metavar="N", help="archived days (default 2)"
    )
    p.add_argument(
        "--live-seconds", type=_positive_int, default=20, metavar="S", help="live run (default 20)"
    )
    p.add_argument(
        "--trades-per-day",
        type=_positive_int,
        default=30_000,
        metavar="N",
        help="local exchange volume (default 30000)",
    )
    p.add_argument(
        "--live-rate",
        type=float,
        default=20.0,
        metavar="N",
        help="local exchange live trades/s per symbol (default 20)",
    )
    p.add_argument("--seed", type=int, default=1, help="local exchange seed (default 1)")
    p.add_argument("--exchange-url", metavar="URL", help="use this exchange instead of starting a local one")
    p.set_defaults(handler=cmd_demo)


async def run_demo(args: argparse.Namespace, settings: Settings, url: str) -> int:
    from microstructure.exchange import ExchangeConfig, LocalExchange
    from microstructure.ingest.collectors.all import collect_all

    today = datetime.now(UTC).date()
    exchange = None
    if args.exchange_url:
        settings.point_at_exchange(args.exchange_url)
    else:
        exchange = LocalExchange(
            ExchangeConfig(
                symbols=tuple(args.symbols),
                seed=args.seed,
                history_days=args.history_days,
                trades_per_day=args.trades_per_day,
                live_rate=args.live_rate,
                cache_dir=settings.home / "exchange-cache",
            )
        )
        await exchange.start()
        settings.point_at_exchange(exchange.base_url)
        print(f"local exchange: {exchange.base_url} (REST, archives), {exchange.ws_url} (websocket)")
    try:
        start = today - timedelta(days=args.history_days)
        print(
            f"\n== backfill {start} .. {today}: aggregate trades, bookDepth bands, funding, metrics, klines"
        )
        hist = await collect_all(
            settings, url, args.symbols, mode="historical", start=start, end=today, handle_signals=False
        )
        print("\n".join(hist.summary_lines()))
        print(f"\n== live: every collector for {args.live_seconds} s")
        live = await collect_all(settings, url, args.symbols, mode="live", live_seconds=args.live_seconds)
        print("\n".join(live.summary_lines()))
        ok = hist.ok and live.ok
    finally:
        if exchange is not None:
            await exchange.stop()
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.status import collect_status, print_status

    url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    migrate.upgrade(url)
    print(f'database: {url}   (psql "{url}")')
    code = asyncio.run(run_demo(args, settings, url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")  # so the schema table's row estimates are current
    print("\n== what is stored")
    print_status(collect_status(url))
    print_schema(url)
    return code
