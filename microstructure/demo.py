"""`microstructure demo`: the whole job end to end on the embedded default.

1. start (or reuse) the embedded PostgreSQL and apply the schema;
2. start the local Binance-compatible exchange in this process (these machines cannot reach Binance),
   with faults on: connections dropped at random, 1 % of aggTrade messages and 0.5 % of depth diffs
   withheld (--no-faults turns them off);
3. backfill the last days: aggregate trades from the bulk archives and today's REST pages, bookDepth
   bands, funding, metrics and klines; features refreshed for them;
4. collect live for a while: trades, a local order book from the diff stream sampled every 500 ms,
   mark price, funding, open interest, liquidations, over the exchange's real websockets; the
   dropped connections come back, withheld ids are fetched from REST, broken books are resynced,
   and the features are kept current;
5. export the hourly Parquet tree, pull the 1m features with indicators, draw a chart;
6. print the summary: rows per table, open gaps, resyncs, the last bars of features_1m, the files.

Run it again and it continues where it stopped. Point it at Binance or another exchange with
--exchange-url (then no local exchange is started).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
        description="Start the database and a local exchange (with faults injected), backfill from archives and "
        "REST, collect trades, book snapshots and market data live, keep the 1m/5m/15m features current, "
        "export the hourly Parquet tree, pull features with indicators, draw a chart, and summarise.",
    )
    p.add_argument("--symbols", type=_symbols, default=["BTCUSDT", "ETHUSDT"], help="default BTCUSDT,ETHUSDT")
    p.add_argument(
        "--history-days", type=_positive_int, default=2, metavar="N", help="archived days (default 2)"
    )
    p.add_argument(
        "--live-seconds", type=_positive_int, default=40, metavar="S", help="live run (default 40)"
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
    p.add_argument("--no-faults", action="store_true", help="local exchange without injected faults")
    p.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="Parquet tree and chart (default: HOME/demo)"
    )
    p.add_argument("--exchange-url", metavar="URL", help="use this exchange instead of starting a local one")
    p.set_defaults(handler=cmd_demo)


async def run_demo(args: argparse.Namespace, settings: Settings, url: str) -> tuple[int, dict[str, Any]]:
    from microstructure.exchange import ExchangeConfig, FaultConfig, LocalExchange
    from microstructure.ingest.collectors.all import collect_all

    today = datetime.now(UTC).date()
    exchange = None
    facts: dict[str, Any] = {}
    if args.exchange_url:
        settings.point_at_exchange(args.exchange_url)
    else:
        faults = FaultConfig() if args.no_faults else FaultConfig(
            ws_close_random=15.0, ws_skip_agg_trades=0.01, ws_break_depth=0.005
        )  # fmt: skip
        exchange = LocalExchange(
            ExchangeConfig(
                symbols=tuple(args.symbols),
                seed=args.seed,
                history_days=args.history_days,
                trades_per_day=args.trades_per_day,
                live_rate=args.live_rate,
                cache_dir=settings.home / "exchange-cache",
                faults=faults,
            )
        )
        await exchange.start()
        settings.point_at_exchange(exchange.base_url)
        print(f"local exchange: {exchange.base_url} (REST, archives), {exchange.ws_url} (websocket)")
        if faults.any():
            print(
                "  faults on: connections dropped every ~15 s, 1 % of aggTrade ids and 0.5 % of depth diffs withheld"
            )
    try:
        start = today - timedelta(days=args.history_days)
        print(
            f"\n== backfill {start} .. {today}: aggregate trades, bookDepth bands, funding, metrics, klines"
        )
        hist = await collect_all(
            settings, url, args.symbols, mode="historical", start=start, end=today, handle_signals=False
        )
        print("\n".join(hist.summary_lines()))
        print(f"\n== live: every collector for {args.live_seconds} s (diff-depth books, features every 5 s)")
        live = await collect_all(
            settings, url, args.symbols, mode="live", live_seconds=args.live_seconds, book_source="diff"
        )
        print("\n".join(live.summary_lines()))
        facts = _healed(live)
        ok = hist.ok and live.ok
    finally:
        if exchange is not None:
            await exchange.stop()
    return (0 if ok else 1), facts


def _healed(live: Any) -> dict[str, Any]:
    """What the faults did and how the run healed them, from the live report."""
    book = live.parts.get("book")
    trades = live.parts.get("aggtrades")
    reconnects = sum(getattr(p, "reconnects", 0) for p in live.parts.values() if hasattr(p, "reconnects"))
    syms = getattr(trades, "symbols", {}) or {}
    return {
        "reconnects": reconnects,
        "resyncs": dict(getattr(book, "resyncs", {}) or {}),
        "gaps_detected": sum(getattr(s, "gaps_detected", 0) for s in syms.values()),
        "ids_by_rest": sum(getattr(s, "rest_rows", 0) for s in syms.values()),
    }


def _after_collection(args: argparse.Namespace, url: str, out: Path) -> dict[str, Any]:
    """Export the Parquet tree, pull features with indicators, draw the chart."""
    import psycopg

    from microstructure.export.exporter import export_once
    from microstructure.export.pull import pull_features
    from microstructure.export.types import DEFAULT_TYPES

    # the tables were just loaded: planner statistics now, not when autovacuum gets to them (the
    # feature views' quality and finality joins get nested-loop plans over unanalyzed tables)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    print(f"\n== export: hourly Parquet partitions under {out / 'data'}")
    report = export_once(url, out / "data", types=list(DEFAULT_TYPES))  # every type
    print("\n".join(report.summary_lines()))
    files = sorted((out / "data").rglob("data.parquet"))
    import duckdb

    glob = str(out / "data" / "aggtrades" / "*" / "*" / "*" / "*" / "*" / "data.parquet")
    trades = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0] if files else 0
    print(f"  {len(files)} files in the tree; DuckDB reads {trades:,} aggregate trades from it")
    end = datetime.now(UTC)
    start = end - timedelta(days=args.history_days)
    print(f"\n== feature pull: 1m bars with indicators, {pull_span(start, end)}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said below: how many bars the indicators had before start
        bars = pull_features(args.symbols, start, end, "1m", dsn=url)
    read = ", ".join(f"{s} {n}" for s, n in bars.attrs["warmup_bars_read"].items())
    print(
        f"  {len(bars):,} final bars x {len(bars.columns)} columns (features, final, available_at, 27 TA-Lib "
        f"indicators); bars before the start for the indicators: {read} ({bars.attrs['warmup_bars']} needed"
        + ("; the first values of the slow ones are cold)" if bars.attrs["cold_indicators"] else ")")
    )
    if len(bars):
        last = bars.groupby(level="symbol").tail(1)[
            ["close", "vwap", "cvd", "rsi_14", "macd", "atr_14", "bb_pct_b"]
        ]
        print(last.to_string(float_format=lambda v: f"{v:.6g}"))
    chart = None
    sym = args.symbols[0]
    try:
        from microstructure.export.chart import ChartError, plot_features

        one = (
            bars.loc[[sym]] if len(bars) and sym in bars.index.get_level_values("symbol") else bars.iloc[0:0]
        )
        chart = plot_features(one, sym, "1m", out / "chart.png")
        print(f"\n== chart: {chart}")
    except ChartError as exc:
        print(f"\n== chart skipped: {exc}")
    return {"files": len(files), "written": report.files_written, "chart": chart}


def _summary(url: str, symbols: list[str], facts: dict[str, Any], after: dict[str, Any], out: Path) -> None:
    from microstructure.features_sql.cli import print_bars

    print("\n== summary")
    with psycopg.connect(url) as conn:
        for table in ("agg_trades", "book_snapshots", "mark_prices", "funding_rates", "open_interest",
                      "liquidations", "book_depth_bands", "futures_metrics", "price_klines",
                      "features_1m", "features_5m", "features_15m"):  # fmt: skip
            n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            print(f"  {table:18s} {n:>12,} rows")
        gaps = conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone()[0]  # type: ignore[index]
    print(f"  open aggregate-trade gaps: {gaps}")
    if facts:
        print(
            f"  healed: {facts['reconnects']} dropped connections reconnected, {facts['gaps_detected']} id gaps "
            f"filled by REST ({facts['ids_by_rest']:,} ids), book resyncs "
            + (", ".join(f"{s} {n}" for s, n in facts["resyncs"].items()) or "0")
        )
    for sym in symbols:
        print_bars(url, sym, "1m", 5)
    print(f"  Parquet tree: {out / 'data'} ({after['files']} files, {after['written']} written this run)")
    if after.get("chart"):
        print(f"  chart: {after['chart']}")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.status import collect_status, print_status

    url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    migrate.upgrade(url)
    print(f'database: {_masked(url)}   (psql "$(microstructure db url)")')
    out = (args.output_dir or settings.home / "demo").expanduser().resolve()
    code, facts = asyncio.run(run_demo(args, settings, url))
    after = _after_collection(args, url, out)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")  # so the schema table's row estimates are current
    print("\n== what is stored")
    print_status(collect_status(url))
    print_schema(url)
    _summary(url, args.symbols, facts, after, out)
    return code


def _masked(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def pull_span(start: datetime, end: datetime) -> str:
    """A pull's range for a header, both ends with their date: '2026-12-05 12:42 .. 2026-12-07 12:42 UTC'."""
    return f"{start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC"
