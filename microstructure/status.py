"""`microstructure status`: coverage, gaps and live lag per symbol, plus ingest events."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from microstructure.config import Settings
from microstructure.db import migrate
from microstructure.db.connect import resolve_database_url
from microstructure.db.queries import load


@dataclass
class StatusReport:
    symbols: list[dict[str, Any]]
    gaps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    group_members: list[dict[str, Any]] = field(default_factory=list)  # collector groups (section below)
    group_orphans: list[dict[str, Any]] = field(default_factory=list)


def collect_status(url: str, *, gap_limit: int = 50, event_window: str = "24 hours") -> StatusReport:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        report = StatusReport(
            symbols=conn.execute(load("status_symbols")).fetchall(),
            gaps=conn.execute(load("status_gaps"), {"limit": gap_limit}).fetchall(),
            events=conn.execute(load("status_events"), {"window": event_window}).fetchall(),
            tables=conn.execute(load("status_tables")).fetchall(),
        )
        collect_group_status(conn, report)
        return report


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


def print_status(report: StatusReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)  # pipes and logs get whole columns
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
        help="coverage, gaps and live lag per symbol; resyncs and other ingest events",
        description="Per symbol: days and ids of aggregate trades stored, missing ids, open gaps and how far "
        "the newest stored trade lags behind now; other raw tables; ingest events of the last 24 h.",
    )
    p.add_argument("--gap-limit", type=int, default=50, metavar="N", help="show at most N gaps (default 50)")
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings)  # connects once: a bad URL is one clear line
    migrate.upgrade(url)
    print_status(collect_status(url, gap_limit=args.gap_limit))
    return 0
