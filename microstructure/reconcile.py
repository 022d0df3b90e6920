"""`microstructure reconcile`: stored aggregate-trade days checked against Binance's daily archives.

Exit codes: 0 done (every day reconciled, unchanged or not published yet); 1 done with refused days
(a checksum mismatch, an unreadable archive), the reasons on one line; 2 bad arguments/setup;
3 the archive server unreachable.
"""

from __future__ import annotations

import argparse
import sys

from microstructure.args import parse_day_range, parse_symbols
from microstructure.config import SettingError, Settings

HELP = (
    "Compare every stored aggregate-trade day of [--start, --end] with the day's data.binance.vision "
    "archive (sha256 checked against its .CHECKSUM) by aggregate id: ids missing from the database are "
    "inserted, rows that differ (time, price, quantity, first/last trade id, maker flag) are replaced by "
    "the archive's and each difference is reported, stored rows the archive does not hold are moved to "
    "the table archive_displaced and reported. The day is marked verified with the archive's sha256 "
    "(agg_trade_coverage.verified_sha256, archive_verified), ingest_events records what changed, and "
    "the features of every changed range are refreshed. A day already verified against the published "
    "checksum is skipped; a re-uploaded archive (its checksum changed) is reconciled again. "
    "Exit codes: 0 done, 1 refused days, 2 bad arguments, 3 archive server unreachable."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from microstructure.ingest.cli import add_url_options

    p = subparsers.add_parser(
        "reconcile", help="check stored trade days against Binance's archives", description=HELP
    )
    p.add_argument(
        "--symbol",
        action="append",
        default=[],
        metavar="SYMBOL",
        help="contract (repeatable, or comma-separated)",
    )
    p.add_argument("--all-symbols", action="store_true", help="every symbol with stored trades in the range")
    p.add_argument("--start", metavar="YYYY-MM-DD", required=True, help="first UTC day")
    p.add_argument("--end", metavar="YYYY-MM-DD", help="last UTC day (default: --start)")
    p.add_argument(
        "--datasets",
        default="aggTrades,bookDepth,metrics",
        metavar="LIST",
        help="archive datasets to check (default aggTrades,bookDepth,metrics): bookDepth and metrics days "
        "with stored rows are loaded again from their archive when its checksum is not the one last loaded",
    )
    p.add_argument(
        "--force", action="store_true", help="compare days already verified against the same checksum too"
    )
    add_url_options(p)
    p.set_defaults(handler=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    import aiohttp

    from microstructure.ingest.binance.archives import ArchiveError
    from microstructure.ingest.cli import apply_urls, prepare_database, refresh_features, run_async
    from microstructure.ingest.collectors.reconcile import DATASETS, reconcile

    if args.all_symbols and args.symbol:
        raise SettingError("--all-symbols: give either --symbol or --all-symbols, not both")
    if not args.all_symbols and not args.symbol:
        raise SettingError("--symbol: give at least one --symbol, or --all-symbols")
    symbols = None if args.all_symbols else parse_symbols(args.symbol)
    start, last = parse_day_range(args.start, args.end)
    end = last or start
    datasets = [d.strip() for d in str(args.datasets).split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise SettingError(f"--datasets: expected some of {', '.join(DATASETS)}, got {args.datasets!r}")
    apply_urls(args, settings)
    url = prepare_database(settings)
    try:
        report = run_async(
            reconcile(url, settings.archive_url, symbols, start, end, force=args.force, datasets=datasets)
        )
    except (ArchiveError, aiohttp.ClientError, OSError) as exc:
        print(
            f"microstructure: error: cannot reach the archives at {settings.archive_url}: {exc}",
            file=sys.stderr,
        )
        return 3
    changed = any(r.changed for r in report.results) or bool(report.reloaded)
    features = refresh_features(url) if changed else []
    for line in [*report.summary_lines(), *features]:
        print(line)
    if not report.ok:
        print(f"microstructure: error: {'; '.join(report.problems())}", file=sys.stderr)
        return 1
    return 0
