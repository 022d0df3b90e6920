"""`microstructure status`: batches waiting in spill files, coverage, gaps and live lag per symbol,
plus ingest events."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from microstructure.args import parse_int, parse_seconds
from microstructure.config import Settings
from microstructure.db import migrate
from microstructure.db.connect import resolve_database_url
from microstructure.db.queries import load
from microstructure.ingest.sink.spill_report import SpillReport, read_spill, spill_folder


@dataclass
class StatusReport:
    symbols: list[dict[str, Any]]
    gaps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    days: list[dict[str, Any]] = field(default_factory=list)  # halts vs loss per symbol and day
    group_members: list[dict[str, Any]] = field(default_factory=list)  # collector groups (section below)
    group_orphans: list[dict[str, Any]] = field(default_factory=list)
    spill: SpillReport | None = None  # batches waiting in HOME/spill (read from the folder, not the database)


DEFAULT_STATUS_DAYS = 3
DEFAULT_QUIET_SECONDS = 60.0


def collect_status(
    url: str | None = None,
    *,
    gap_limit: int = 50,
    event_window: str = "24 hours",
    days: int = DEFAULT_STATUS_DAYS,
    quiet_seconds: float = DEFAULT_QUIET_SECONDS,
) -> StatusReport:
    """What `status` shows. `url` None: the database the CLI uses (db.connect.default_database_url)."""
    if url is None:
        from microstructure.db.connect import default_database_url

        url = default_database_url()
    with psycopg.connect(url, row_factory=dict_row) as conn:
        report = StatusReport(
            symbols=conn.execute(load("status_symbols")).fetchall(),
            gaps=conn.execute(load("status_gaps"), {"limit": gap_limit}).fetchall(),
            events=conn.execute(load("status_events"), {"window": event_window}).fetchall(),
            tables=conn.execute(load("status_tables")).fetchall(),
            days=halts_vs_loss(conn, days, quiet_seconds),
        )
        collect_group_status(conn, report)
        return report


# ---------------------------------------------------------------- halts vs loss, per symbol and day


def halts_vs_loss(conn: psycopg.Connection[Any], days: int, quiet_seconds: float) -> list[dict[str, Any]]:
    """Per symbol and UTC day of the last `days` stored days: ids lost (gaps in the ids between stored
    trades) apart from quiet spans (at least `quiet_seconds` without a trade while the ids stayed
    contiguous: a halt or a quiet market, not a loss), and whether the archive verified the day."""
    if days <= 0:
        return []
    return conn.execute(load("status_days"), {"days": days, "quiet_s": quiet_seconds}).fetchall()


def print_days(console: Any, days: list[dict[str, Any]], quiet_seconds: float) -> None:
    from rich.table import Table

    if not days:
        return
    t = Table(
        "symbol",
        "day",
        "rows",
        "lost ids",
        "loss spans",
        f"quiet spans >= {quiet_seconds:g} s",
        "quiet s",
        "longest quiet s",
        "archive",
        title="trade days: loss (a gap in the ids) vs quiet (no trade, ids contiguous)",
    )
    for r in days:
        t.add_row(
            r["symbol"],
            _fmt(r["day"]),
            _fmt(r["row_count"]),
            _fmt(r["lost_ids"]),
            _fmt(r["loss_spans"]),
            _fmt(r["quiet_spans"]),
            _fmt(float(r["quiet_seconds"])),
            _fmt(float(r["longest_quiet_seconds"])),
            f"verified {r['verified_sha256'][:12]}" if r["verified_sha256"] else "not verified",
        )
    console.print(t)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_status(report: StatusReport, *, quiet_seconds: float = DEFAULT_QUIET_SECONDS) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)  # pipes and logs get whole columns
    if report.spill is not None:  # first: the counts below do not hold these batches yet
        print_spill(report.spill, console)
    if not report.symbols:
        console.print("no aggregate trades stored yet")
    else:
        t = Table(
            "symbol",
            "days",
            "first day",
            "last day",
            "rows",
            "ids",
            "missing",
            "open gaps",
            "last trade",
            "lag s",
            title="aggregate trades",
        )
        for r in report.symbols:
            t.add_row(
                r["symbol"],
                _fmt(r["days"]),
                _fmt(r["first_day"]),
                _fmt(r["last_day"]),
                _fmt(r["row_count"]),
                f"{_fmt(r['first_id'])}..{_fmt(r['last_id'])}",
                _fmt(r["missing_in_days"]),
                f"{_fmt(r['open_gaps'])} ({_fmt(r['open_missing'])} ids)",
                _fmt(r["last_trade_ts"]),
                _fmt(float(r["lag_seconds"]) if r["lag_seconds"] is not None else None),
            )
        console.print(t)
    if report.gaps:
        t = Table(
            "symbol", "from id", "to id", "missing", "status", "detected", "note", title="gaps not filled"
        )
        for g in report.gaps:
            t.add_row(
                g["symbol"],
                _fmt(g["from_id"]),
                _fmt(g["to_id"]),
                _fmt(g["missing"]),
                g["status"],
                _fmt(g["detected_at"]),
                g["note"] or "",
            )
        console.print(t)
    print_days(console, report.days, quiet_seconds)
    t = Table("table", "rows", "last exchange time", title="other raw tables")
    for r in report.tables:
        t.add_row(r["table_name"], _fmt(r["row_count"]), _fmt(r["last_ts"]))
    console.print(t)
    if report.events:
        t = Table("collector", "symbol", "event", "count", "last seen", title="ingest events, last 24 h")
        for e in report.events:
            t.add_row(e["collector"], e["symbol"], e["kind"], _fmt(e["n"]), _fmt(e["last_seen"]))
        console.print(t)
    print_group_status(report, console)


def print_spill(spill: SpillReport, console: Any) -> None:
    for line in spill.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- collector groups (--group)


def collect_group_status(conn: psycopg.Connection[Any], report: StatusReport) -> None:
    """Every member of every collector group (alive or dead by its lease timeout) and, per group,
    the symbols no live member collects."""
    report.group_members = conn.execute(load("status_group")).fetchall()
    report.group_orphans = conn.execute(load("status_group_orphans")).fetchall()


def print_group_status(report: StatusReport, console: Any) -> None:
    from rich.table import Table

    if not report.group_members:
        return
    t = Table(
        "group", "member", "host", "pid", "alive", "symbols", "last heartbeat", "s ago", "owned",
        title="collector groups",
    )  # fmt: skip
    for m in report.group_members:
        owned = ", ".join(m["owned"][:8]) + (" ..." if len(m["owned"]) > 8 else "")
        t.add_row(
            m["group_name"],
            m["member_id"],
            m["host"],
            str(m["pid"]),
            "yes" if m["alive"] else "DEAD",
            f"{m['owned_count']}/{m['universe_size']}",
            _fmt(m["heartbeat_at"]),
            _fmt(float(m["seconds_since_heartbeat"])),
            owned,
        )
    console.print(t)
    orphans = {o["group_name"]: o["symbols"] for o in report.group_orphans}
    for name in sorted({m["group_name"] for m in report.group_members}):
        missing = orphans.get(name, [])
        console.print(
            f"group {name}: "
            + (
                f"{len(missing)} symbols without a live owner: {', '.join(missing)}"
                if missing
                else "every symbol has a live owner"
            )
        )


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "status",
        help="spilled batches not yet stored; coverage, gaps and live lag per symbol; ingest events",
        description="First, the batches waiting in spill files (HOME/spill: written while the database was away, "
        "replayed by the next collector start; shown also when the database is down). Per symbol: days and ids of aggregate trades stored, missing ids, open gaps and how far "
        "the newest stored trade lags behind now; per symbol and day of the last --days days, ids lost (a gap "
        "in the ids is loss) apart from quiet spans (no trade while the ids stay contiguous: a halt or a "
        "quiet market, never a gap) and whether the archive verified the day (microstructure reconcile); "
        "other raw tables; ingest events of the last 24 h.",
    )
    p.add_argument("--gap-limit", type=int, default=50, metavar="N", help="show at most N gaps (default 50)")
    p.add_argument(
        "--days",
        default=str(DEFAULT_STATUS_DAYS),
        metavar="N",
        help=f"loss vs quiet per symbol and day for the last N stored days (default {DEFAULT_STATUS_DAYS}; 0: off)",
    )
    p.add_argument(
        "--quiet-seconds",
        default=str(DEFAULT_QUIET_SECONDS),
        metavar="S",
        help="a span of at least S seconds without a trade while the ids stay contiguous counts as quiet "
        f"(a halt or a quiet market, never a gap; default {DEFAULT_QUIET_SECONDS:g})",
    )
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    days = parse_int(args.days, "--days", 0)
    quiet = parse_seconds(args.quiet_seconds, "--quiet-seconds")
    spill = read_spill(spill_folder(settings.home))
    try:
        url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    except Exception:
        if spill.waiting or spill.rejected:  # what the folder knows is worth saying with the database down
            from rich.console import Console

            print_spill(spill, Console(width=None if sys.stdout.isatty() else 140))
        raise
    migrate.upgrade(url)
    report = collect_status(url, gap_limit=args.gap_limit, days=days, quiet_seconds=quiet)
    report.spill = spill
    print_status(report, quiet_seconds=quiet)
    return 0
