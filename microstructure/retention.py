"""`microstructure retention`: drop raw rows older than N days, only where nothing still needs them.

    microstructure retention --keep-days N [--table T ...] [--export-dir DIR ...] [--force] [--dry-run]

Days before today - N (UTC, whole days) are candidates. For each raw table the days are walked oldest
first and dropped up to the first one that must stay, which is reported with its reason:

- the Parquet export must hold it: in an export folder (those the exporter recorded in
  microstructure_meta, or --export-dir), the day's manifest of the table's raw export type counts, for
  every symbol, as many rows as the table holds for that symbol and day. Before any export has run
  nothing is dropped unless --force (which skips this check only);
- the feature layer must have materialised it (feature source tables): the feature refresher has run
  and has consumed every logged write of the table up to the end of the day. funding_rates (three
  rows a day) is never dropped: the feature views read it at query time.

How a day goes: on plain PostgreSQL a day partition (agg_trades, book_snapshots) is detached
CONCURRENTLY and dropped, which frees its disk at once and blocks no writer of other days; a
TimescaleDB hypertable drops its chunks that end before the cut (drop_chunks: whole chunks only, so
a table with 30-day chunks keeps a partly-old chunk until all of it is old); the small unpartitioned
tables delete the rows. Coverage rows of dropped agg_trades days go too (coverage says what is
stored); the run is recorded in ingest_events. Nothing is logged for the feature refresher or the
export: feature bars and Parquet files of dropped days stay as they are, and a query on a dropped
range returns no rows. The setting MICROSTRUCTURE_RETENTION_KEEP_DAYS gives --keep-days a default.

Scheduled: `collect all --mode live --retention-keep-days N` (or the setting) runs the same check and
drop every --retention-interval seconds (`run_scheduled`), never forced: a day goes once the export
(run on its own schedule) holds it; a round that cannot run (no export yet, the database away) is
logged and the next one tries again.

Exit codes: 0 done (days held back are reported, not an error); 2 bad arguments, or no export yet
without --force (nothing dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

from microstructure.config import SettingError, Settings
from microstructure.db.invalidation_log import pending_ranges
from microstructure.db.queries import load
from microstructure.db.tables import TIME_TABLES, TimeTable
from microstructure.export.partitions import Manifest, day_dir
from microstructure.export.types import FEATURE_SOURCES, RAW_TYPES
from microstructure.features_sql.stages import VIEW_RAW_TABLES
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

TABLES = {t.name: t for t in TIME_TABLES}
EXPORT_TYPE = {t.sources[0]: t.name for t in RAW_TYPES}  # raw table -> its export type
FEATURES_CONSUMER = "features"


DEFAULT_INTERVAL = 3600.0  # seconds between scheduled rounds (collect all)


class NoExportYet(SettingError):
    """Retention would drop rows no Parquet export holds."""


@dataclass
class TableResult:
    table: str
    layout: str = ""
    dropped_days: list[date] = field(default_factory=list)
    dropped_rows: int = 0
    held: tuple[date, str] | None = None  # the first day kept back and why

    def line(self) -> str:
        what = (
            f"dropped {len(self.dropped_days)} days ({self.dropped_rows:,} rows, "
            f"{self.dropped_days[0]} .. {self.dropped_days[-1]})"
            if self.dropped_days
            else "nothing dropped"
        )
        kept = f"; kept from {self.held[0]}: {self.held[1]}" if self.held else ""
        return f"{self.table} ({self.layout}): {what}{kept}"


@dataclass
class RetentionReport:
    keep_from: date
    dry_run: bool
    tables: list[TableResult] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        head = f"retention: keep from {self.keep_from} (UTC){' (dry run: nothing dropped)' if self.dry_run else ''}"
        return [head, *("  " + t.line() for t in self.tables)]


def _sql(name: str, t: TimeTable) -> str:
    return load(name).replace("{table}", t.name).replace("{time}", t.time_column)


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


async def export_roots(conn: asyncpg.Connection) -> list[Path]:
    return [Path(r["root"]) for r in await conn.fetch(load("retention_export_roots"))]


def exported(roots: Sequence[Path], type_name: str, day: date, counts: dict[str, int]) -> bool:
    """Does one export folder hold every row of `day` the database has (rows per symbol, manifests)?"""
    for root in roots:
        ok = True
        for symbol, n in counts.items():
            hours = Manifest.load(day_dir(root, type_name, symbol, _day_start(day))).hours
            if sum(int(h.get("rows", 0)) for h in hours.values()) != n:
                ok = False
                break
        if ok:
            return True
    return False


async def _features_hold(conn: asyncpg.Connection, table: str, day_end: datetime) -> str | None:
    if table in VIEW_RAW_TABLES:
        return "the feature views read it at query time (each bar's last settled funding)"
    if table not in FEATURE_SOURCES:
        return None
    if not await conn.fetchval(load("retention_features_cursor")):
        return "the features were never refreshed (microstructure features refresh)"
    _, _, ranges = await pending_ranges(conn, FEATURES_CONSUMER, [table])
    if any(lo < day_end for _t, _s, lo, _hi in ranges):
        return "writes the feature refresher has not materialised yet (microstructure features refresh)"
    return None


async def _drop_before(conn: asyncpg.Connection, t: TimeTable, layout: str, cut: date) -> None:
    cut_ts = _day_start(cut)
    if t.name == "agg_trades":  # the first trade time survives the drop (docs/FEATURES.md "Quality")
        await conn.execute(load("retention_first_trades"), cut_ts)
    if layout == "partitioned":
        for r in await conn.fetch(load("retention_partitions"), t.name):
            if r["day"] >= cut:
                break
            name = r["name"]  # matched against microstructure_day_partition_name: no user text
            try:  # no lock on the parent that would block writers (PostgreSQL >= 14)
                await conn.execute(f'ALTER TABLE {t.name} DETACH PARTITION "{name}" CONCURRENTLY')
            except asyncpg.exceptions.FeatureNotSupportedError:
                await conn.execute(f'ALTER TABLE {t.name} DETACH PARTITION "{name}"')
            await conn.execute(f'DROP TABLE "{name}"')
    elif layout == "hypertable":
        await conn.fetchval(load("retention_drop_chunks"), t.name, cut_ts)
    else:
        await conn.execute(_sql("retention_delete", t), cut_ts)
    if t.name == "agg_trades":
        await conn.execute(load("retention_coverage"), cut)


async def _layout(conn: asyncpg.Connection, table: str) -> str:
    row = await conn.fetchrow(load("retention_layout"), table)
    if row["partitioned"]:
        return "partitioned"
    if row["timescaledb"] and await conn.fetchval(load("retention_is_hypertable"), table):
        return "hypertable"
    return "plain"


async def run_retention(
    dsn: str,
    keep_days: int,
    *,
    tables: Sequence[str] | None = None,
    export_dirs: Sequence[Path] | None = None,
    force: bool = False,
    dry_run: bool = False,
    today: date | None = None,
) -> RetentionReport:
    """Drop what is older than `keep_days` days and safe to drop (module doc)."""
    if keep_days < 1:
        raise SettingError(f"--keep-days: expected a number of days >= 1, got {keep_days}")
    chosen = list(tables) if tables else list(TABLES)
    unknown = [t for t in chosen if t not in TABLES]
    if unknown:
        raise SettingError(f"--table: unknown raw table {unknown[0]!r} (one of {', '.join(TABLES)})")
    keep_from = (today or datetime.now(UTC).date()) - timedelta(days=keep_days)
    report = RetentionReport(keep_from, dry_run)
    conn = await asyncpg.connect(dsn)
    try:
        roots = list(export_dirs) if export_dirs else await export_roots(conn)
        if not roots and not force:
            raise NoExportYet(
                "retention: no Parquet export has been written yet, so nothing old is archived; "
                "run `microstructure export` first, or pass --force to drop without it"
            )
        for name in chosen:
            t = TABLES[name]
            res = TableResult(name, await _layout(conn, name))
            report.tables.append(res)
            by_day: dict[date, dict[str, int]] = {}
            for r in await conn.fetch(_sql("retention_day_counts", t), _day_start(keep_from)):
                by_day.setdefault(r["day"], {})[r["symbol"]] = int(r["n"])
            cut = keep_from
            for d in sorted(by_day):
                why = await _features_hold(conn, name, _day_start(d + timedelta(days=1)))
                if why is None and not force and not exported(roots, EXPORT_TYPE[name], d, by_day[d]):
                    why = f"not in a Parquet export ({EXPORT_TYPE[name]}) with all its rows"
                if why is not None:
                    res.held = (d, why)
                    cut = d
                    break
                res.dropped_days.append(d)
                res.dropped_rows += sum(by_day[d].values())
            if res.dropped_days and not dry_run:
                await _drop_before(conn, t, res.layout, cut)
        if not dry_run and any(t.dropped_days for t in report.tables):
            detail = {
                "keep_from": keep_from.isoformat(),
                "tables": {
                    t.table: [d.isoformat() for d in t.dropped_days] for t in report.tables if t.dropped_days
                },
                "forced": force,
            }
            await conn.execute(load("retention_event"), json.dumps(detail))
    finally:
        await conn.close()
    for line in report.summary_lines():
        log.info("%s", line)
    return report


@dataclass
class ScheduledRetention:
    """What the rounds of `run_scheduled` did."""

    keep_days: int
    rounds: int = 0
    dropped: dict[str, list[date]] = field(default_factory=dict)  # table -> the days dropped
    waiting: str = ""  # why the last round could not run, if it could not

    def summary_lines(self) -> list[str]:
        done = "; ".join(f"{t} {len(d)} days ({min(d)} .. {max(d)})" for t, d in sorted(self.dropped.items()))
        line = f"retention (keep {self.keep_days} days, {self.rounds} rounds): {'dropped ' + done if done else 'nothing dropped'}"
        return [line + (f"; last round: {self.waiting}" if self.waiting else "")]


async def run_scheduled(
    dsn: str, keep_days: int, stop: asyncio.Event, interval: float = DEFAULT_INTERVAL
) -> ScheduledRetention:
    """`run_retention(dsn, keep_days)` now and then every `interval` seconds until `stop` is set (see
    the module doc); what the rounds dropped."""
    if keep_days < 1:
        raise SettingError(f"--retention-keep-days: expected a number of days >= 1, got {keep_days}")
    out = ScheduledRetention(keep_days)
    while not stop.is_set():
        out.rounds += 1
        try:
            report = await run_retention(dsn, keep_days)
        except NoExportYet as exc:
            if out.waiting != str(exc):  # said once, not every round
                log.warning("%s", exc)
            out.waiting = str(exc)
        except (OSError, asyncpg.exceptions.PostgresError, asyncpg.exceptions.InterfaceError) as exc:
            out.waiting = f"failed: {type(exc).__name__}: {exc}"
            log.error("retention round %d failed: %s: %s", out.rounds, type(exc).__name__, exc)
        else:
            out.waiting = ""
            for t in report.tables:
                if t.dropped_days:
                    out.dropped.setdefault(t.table, []).extend(t.dropped_days)
        await sleep_or_stop(stop, interval)
    return out


# ---------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "retention",
        help="drop raw rows older than N days that the Parquet export already holds",
        description="Drop raw data older than --keep-days whole UTC days: day partitions on PostgreSQL, chunks "
        "on TimescaleDB. A day goes only when the Parquet export holds all its rows (or --force) and the feature "
        "refresher has materialised it; the first day that must stay is reported with its reason. "
        "Exit codes: 0 done, 2 bad arguments or no export yet without --force.",
    )
    p.add_argument(
        "--keep-days", type=int, metavar="N",
        help="keep today and the N days before it (env MICROSTRUCTURE_RETENTION_KEEP_DAYS)",
    )  # fmt: skip
    p.add_argument(
        "--table", action="append", metavar="TABLE",
        help=f"only these raw tables (repeatable; default all: {', '.join(TABLES)})",
    )  # fmt: skip
    p.add_argument(
        "--export-dir", action="append", type=Path, metavar="DIR",
        help="the export folder(s) to check against (default: every folder the exporter recorded)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="drop even what no Parquet export holds")
    p.add_argument("--dry-run", action="store_true", help="say what would be dropped, drop nothing")
    p.set_defaults(handler=cmd_retention)


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from microstructure.features_sql.cli import prepared_database

    keep = args.keep_days if args.keep_days is not None else settings.retention_keep_days
    if keep is None:
        raise SettingError("--keep-days: give a number of days (or set MICROSTRUCTURE_RETENTION_KEEP_DAYS)")
    tables = [t.strip() for v in args.table or [] for t in v.split(",") if t.strip()]
    url = prepared_database(settings)
    report = asyncio.run(
        run_retention(
            url,
            keep,
            tables=tables or None,
            export_dirs=args.export_dir,
            force=args.force,
            dry_run=args.dry_run,
        )
    )
    for line in report.summary_lines():
        print(line)
    return 0
