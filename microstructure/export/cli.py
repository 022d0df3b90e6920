"""`microstructure export` (hourly Parquet partitions, one-shot or --follow), `features export` and
`features pull`. Exit codes: 0 done; 2 bad arguments (unknown type, symbol or timeframe, an inverted
range, an output folder that cannot be written), nothing written; 3 the database failed mid-way."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from microstructure.config import SettingError, Settings
from microstructure.export.types import DEFAULT_TYPES, TYPES
from microstructure.features_sql.cli import (
    add_subcommand,
    features_subcommands,
    parse_range,
    parse_timeframe,
    prepared_database,
)
from microstructure.features_sql.stages import TIMEFRAMES, view_name

DEFAULT_POLL = 60.0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, metavar="DIR", type=Path, help="root of the Parquet tree")
    p.add_argument("--symbol", action="append", metavar="SYMBOL", help="only these contracts (repeatable)")
    p.add_argument("--start", metavar="TIME", help="UTC date or time: export only hours from here")
    p.add_argument("--end", metavar="TIME", help="UTC date or time: export only hours before this")
    p.add_argument("--compression", default="snappy", metavar="CODEC", help="snappy (default) | zstd")
    p.add_argument(
        "--lateness", default="10", metavar="SECONDS",
        help="an hour is exported once its end plus this has passed (default 10, FEATURES.md's allowance)",
    )  # fmt: skip
    p.add_argument("--follow", action="store_true", help="keep running: export each hour as it closes")
    p.add_argument(
        "--poll", default=str(DEFAULT_POLL), metavar="SECONDS",
        help=f"--follow: look for hours changed by late writes at least this often (default {DEFAULT_POLL:g})",
    )  # fmt: skip


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    exp = subparsers.add_parser(
        "export",
        help="hourly Snappy Parquet partitions of raw data and features",
        description="Write <DIR>/<type>/<SYMBOL>/<YYYY>/<MM>/<DD>/hour=<HH>/data.parquet for every closed UTC "
        "hour, with a manifest per day under <DIR>/_manifests/<type>/<SYMBOL>/<YYYY>/<MM>/<DD>.json (rows, "
        "min/max time, sha256 per file), outside the data folders. Incremental: hours already "
        "exported are rewritten only when writes changed their rows (the invalidation log), and an unchanged "
        "hour keeps its bytes and mtime. Types: " + ", ".join(TYPES) + " (default: every type). "
        "Exit codes: 0 done, 2 bad arguments, 3 the database failed.",
    )
    exp.add_argument(
        "--type", action="append", metavar="TYPE", help="what to export (repeatable; comma lists ok)"
    )
    _common(exp)
    exp.set_defaults(handler=cmd_export)
    plot = subparsers.add_parser(
        "plot",
        help="draw a symbol's feature bars: price/vwap, cvd, imbalance, spread, funding/OI, liquidations",
        description="One PNG of stacked panels with a shared time axis from features_<timeframe> (final bars): "
        "close with vwap, cvd, book imbalance 5/10/20, spread (bps), funding rate with open interest, and "
        "liquidations by side, marked as sampled (lower bounds). Default range: the last day of bars. Needs "
        "matplotlib (pip install 'microstructure[plot]').",
    )
    plot.add_argument("--symbol", required=True, metavar="SYMBOL")
    plot.add_argument("--timeframe", default="1m", metavar="TF", help="1m (default) | 5m | 15m")
    plot.add_argument("--start", metavar="TIME", help="UTC date or time (default: a day before --end)")
    plot.add_argument("--end", metavar="TIME", help="UTC date or time (default: after the last bar)")
    plot.add_argument(
        "--out", default="chart.png", type=Path, metavar="FILE", help="PNG file (default chart.png)"
    )
    plot.set_defaults(handler=cmd_plot)
    sub = features_subcommands(subparsers)
    fexp = add_subcommand(
        sub,
        "export",
        help="write features_<tf>/SYMBOL/... Parquet partitions (compute_microstructure_features)",
        description="The feature job: features_1m/5m/15m bars as hourly Parquet partitions under --output-dir, "
        "refreshed first. Same files, manifest and incremental rules as `microstructure export`.",
    )
    fexp.add_argument(
        "--timeframes", default=",".join(TIMEFRAMES), metavar="LIST", help="e.g. 1m,5m,15m (default)"
    )
    _common(fexp)
    fexp.set_defaults(handler=cmd_features_export)
    pull = add_subcommand(
        sub,
        "pull",
        help="pull bars with technical indicators into one Parquet file (walk-forward input)",
        description="pull_features() from the command line: bars of --timeframe for the symbols and [--start, "
        "--end), final bars only (final by their data: every stream feeding the bar was live past its end plus "
        "the lateness; available_at = that time) unless --include-partial, every feature plus 27 TA-Lib "
        "indicators computed on fixed anchor windows (independent of --start) from bars read before it. "
        "With too few bars before --start it warns and says how many it read (--strict-warmup: exit 2).",
    )
    pull.add_argument("--symbol", action="append", required=True, metavar="SYMBOL")
    pull.add_argument("--timeframe", default="1m", metavar="TF")
    pull.add_argument("--start", required=True, metavar="TIME")
    pull.add_argument("--end", required=True, metavar="TIME")
    pull.add_argument(
        "--source", default="db", metavar="SRC", help="db (default) | parquet (needs --data-dir)"
    )
    pull.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="the export's --output-dir, for --source parquet"
    )
    pull.add_argument("--no-technical", action="store_true", help="without indicators")
    pull.add_argument("--include-partial", action="store_true", help="also bars that are not final yet")
    pull.add_argument(
        "--quality",
        default="any",
        metavar="Q",
        help="any (default) | complete: drop bars whose trades are incomplete or whose book coverage is "
        "under --min-book-coverage (docs/FEATURES.md, Quality)",
    )
    pull.add_argument(
        "--min-book-coverage",
        type=float,
        default=None,
        metavar="SHARE",
        help="with --quality complete: the least book_coverage a bar keeps, 0..1 (default 0.9)",
    )
    pull.add_argument(
        "--strict-warmup", action="store_true",
        help="fail (exit 2) when a symbol has fewer bars before --start than the indicators need",
    )  # fmt: skip
    pull.add_argument(
        "--grid", action="store_true",
        help="every bucket of the range for every symbol; missing bars as rows with present=false",
    )  # fmt: skip
    pull.add_argument("--out", required=True, type=Path, metavar="FILE", help="a .parquet (or .csv) file")
    pull.set_defaults(handler=cmd_pull)


# ---------------------------------------------------------------- arguments


def _list(values: list[str] | None) -> list[str]:
    return [p.strip() for v in values or [] for p in v.split(",") if p.strip()]


def _types(values: list[str] | None) -> list[str]:
    names = _list(values) or list(DEFAULT_TYPES)
    for n in names:
        if n not in TYPES:
            raise SettingError(f"--type: no type {n!r}; expected one of {', '.join(TYPES)}")
    return list(dict.fromkeys(names))


def _seconds(value: str, flag: str, lo: float = 0.0) -> float:
    try:
        x = float(value)
    except ValueError:
        x = -1.0
    if not x >= lo:
        raise SettingError(f"{flag}: expected a number of seconds >= {lo:g}, got {value!r}")
    return x


def _compression(value: str) -> str:
    v = value.strip().lower()
    if v not in ("snappy", "zstd"):
        raise SettingError(f"--compression: expected snappy or zstd, got {value!r}")
    return v


def _check_symbols(url: str, symbols: list[str] | None, types: list[str]) -> None:
    """An asked-for symbol that none of the types has rows for is a typo: say so, write nothing."""
    if not symbols:
        return
    from microstructure.export.exporter import known_symbols

    known = known_symbols(url, types)
    for s in symbols:
        if s not in known:
            raise SettingError(
                f"--symbol: no data for {s!r} in {', '.join(types)} (stored: {', '.join(known) or 'none'})"
            )


def _run_export(args: argparse.Namespace, settings: Settings, types: list[str]) -> int:
    from microstructure.args import parse_symbols
    from microstructure.export.exporter import ExportError, check_output_dir, export_once, follow

    symbols = parse_symbols(args.symbol) if args.symbol else None
    start, end = parse_range(args.start, args.end)
    compression = _compression(args.compression)
    lateness = _seconds(args.lateness, "--lateness")
    poll = _seconds(args.poll, "--poll", 1.0)
    if args.follow and (start or end):
        raise SettingError("--follow: exports as hours close; give no --start/--end with it")
    try:
        root = check_output_dir(args.output_dir)
    except ExportError as exc:
        raise SettingError(str(exc)) from None
    url = prepared_database(settings)
    _check_symbols(url, symbols, types)
    kw: dict[str, Any] = {"types": types, "symbols": symbols, "compression": compression}
    if not args.follow:
        try:
            report = export_once(url, root, start=start, end=end, lateness=lateness, **kw)
        except ExportError as exc:
            raise SettingError(str(exc)) from None
        for line in report.summary_lines():
            print(line)
        return 0

    async def run() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await follow(url, root, stop, poll=poll, lateness=lateness, **kw)

    report = asyncio.run(run())
    for line in report.summary_lines():
        print(line)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    return _run_export(args, settings, _types(args.type))


def cmd_features_export(args: argparse.Namespace, settings: Settings) -> int:
    tfs = [parse_timeframe(tf, "--timeframes") for tf in _list([args.timeframes])]
    if not tfs:
        raise SettingError("--timeframes: expected a list like 1m,5m,15m")
    return _run_export(args, settings, [view_name(tf) for tf in dict.fromkeys(tfs)])


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.args import parse_symbols
    from microstructure.export.pull import SOURCES, pull_features

    symbols = parse_symbols(args.symbol)
    tf = parse_timeframe(args.timeframe)
    start, end = parse_range(args.start, args.end)
    assert start is not None and end is not None
    source = args.source.strip().lower()
    if source not in SOURCES:
        raise SettingError(f"--source: expected db or parquet, got {args.source!r}")
    if source == "parquet" and args.data_dir is None:
        raise SettingError("--data-dir: --source parquet reads the export's tree; give its --output-dir")
    out: Path = args.out
    if out.suffix not in (".parquet", ".csv"):
        raise SettingError(f"--out: expected a .parquet or .csv file name, got {str(out)!r}")
    if not out.parent.exists() or not out.parent.is_dir():
        raise SettingError(f"--out: no folder {str(out.parent)!r}")
    quality, min_cov = _quality_args(args)
    url = prepared_database(settings) if source == "db" else None
    if url is not None:
        _check_symbols(url, symbols, [view_name(tf)])
    import warnings

    from microstructure.export.pull import WarmupError, WarmupWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WarmupWarning)
            df = pull_features(
                symbols, start, end, tf, source=source, technical=not args.no_technical,
                final_only=not args.include_partial, dsn=url, data_dir=args.data_dir,
                strict_warmup=args.strict_warmup, grid=args.grid,
                quality=quality, min_book_coverage=min_cov,
            )  # fmt: skip
    except WarmupError as exc:
        raise SettingError(f"--strict-warmup: {exc}") from None
    for w in caught:
        if issubclass(w.category, WarmupWarning):
            print(f"warning: {w.message}")
    from microstructure.export.partitions import write_atomically

    if out.suffix == ".csv":
        data = df.to_csv().encode()
    else:
        import io

        buf = io.BytesIO()
        df.to_parquet(buf)
        data = buf.getvalue()
    try:
        write_atomically(out, data)
    except OSError as exc:
        raise SettingError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    first = df.index.get_level_values("bucket").min() if len(df) else None
    read = df.attrs.get("warmup_bars_read", {})
    print(
        f"{len(df):,} {tf} bars for {', '.join(symbols)} ({len(df.columns)} columns) to {out}"
        + (
            f"; first bar {first:%Y-%m-%d %H:%M} UTC; bars read before --start for the indicators: "
            + ", ".join(f"{s} {n}" for s, n in read.items())
            + f" ({df.attrs['warmup_bars']} needed)"
            if first is not None and not args.no_technical
            else ""
        )
        + (f"; {df.attrs['quality_dropped']:,} incomplete bars dropped" if quality == "complete" else "")
    )
    return 0


def _quality_args(args: argparse.Namespace) -> tuple[str, float]:
    from microstructure.export.pull import DEFAULT_MIN_BOOK_COVERAGE, QUALITIES

    quality = args.quality.strip().lower()
    if quality not in QUALITIES:
        raise SettingError(f"--quality: expected any or complete, got {args.quality!r}")
    cov = args.min_book_coverage
    if cov is not None and quality != "complete":
        raise SettingError("--min-book-coverage: applies with --quality complete only")
    if cov is not None and not 0.0 <= cov <= 1.0:
        raise SettingError(f"--min-book-coverage: expected a share between 0 and 1, got {cov!r}")
    return quality, DEFAULT_MIN_BOOK_COVERAGE if cov is None else cov


def cmd_plot(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from microstructure.args import parse_symbols
    from microstructure.export.chart import ChartError, plot_features
    from microstructure.export.pull import pull_features

    symbol = parse_symbols([args.symbol])[0]
    tf = parse_timeframe(args.timeframe)
    start, end = parse_range(args.start, args.end)
    out: Path = args.out
    if out.suffix.lower() != ".png":
        raise SettingError(f"--out: expected a .png file name, got {str(out)!r}")
    url = prepared_database(settings)
    _check_symbols(url, [symbol], [view_name(tf)])
    if end is None:
        from microstructure.export.exporter import query_arrow

        last = query_arrow(
            url, f"SELECT max(bucket_end) AS t FROM {view_name(tf)} WHERE symbol = $1", (symbol,)
        )
        end = last.column("t")[0].as_py()
    if start is None:
        start = end - timedelta(days=1)
    bars = pull_features(symbol, start, end, tf, dsn=url, technical=False)
    try:
        path = plot_features(bars, symbol, tf, out)
    except ChartError as exc:
        raise SettingError(str(exc)) from None
    print(f"chart of {len(bars):,} {tf} bars of {symbol} written to {path}")
    return 0
