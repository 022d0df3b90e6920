"""Every query of the provisioned Grafana dashboards, with its macros expanded the way Grafana's
PostgreSQL data source does (TimescaleDB on, as provisioned), runs on the embedded database and on
PGlite TimescaleDB and returns the columns its panel shows; a renamed column fails here."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "features"))

from fx_cases import MIDNIGHT, SYM, T0, write_cases
from fx_helpers import copy_raw_rows, run

from microstructure.features_sql import refresher

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")  # Grafana's own pattern (macros.go)
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _interval_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip().strip("'"))
    assert m, f"interval {text!r}"
    return int(m.group(1)) * UNITS[m.group(2)]


def expand(sql: str, variables: dict[str, str], start: datetime, end: datetime, timescaledb: bool) -> str:
    """Template variables first (the front end), then the macros as Grafana's backend does."""
    for name in sorted(variables, key=len, reverse=True):
        sql = sql.replace("$" + name, variables[name])

    def macro(m: re.Match[str]) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        iso = lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{iso(start)}' AND '{iso(end)}'"
        if name == "__timeFrom":
            return f"'{iso(start)}'"
        if name == "__timeTo":
            return f"'{iso(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            s = _interval_seconds(args[1])
            group = (
                f"time_bucket('{s:.3f}s',{args[0]})"
                if timescaledb
                else f"floor(extract(epoch from {args[0]})/{s:g})*{s:g}"
            )
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__time":
            return f'{args[0]} AS "time"'
        raise AssertionError(f"macro ${name} not handled by this test")

    out = MACRO.sub(macro, sql)
    assert "$" not in out, f"unexpanded: {out}"
    return out


def panels() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in DASHBOARDS:
        for p in json.loads(path.read_text())["panels"]:
            out.append((f"{path.stem}: {p['title']}", p))
    return out


def expected_columns(panel: dict[str, Any]) -> list[str]:
    names = [o["matcher"]["options"] for o in panel.get("fieldConfig", {}).get("overrides", [])]
    return (["time"] if panel["type"] == "timeseries" else []) + names


def check_dashboards(dsn: str) -> int:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/timescaledb.yml").read_text())
    timescaledb = bool(ds["datasources"][0]["jsonData"].get("timescaledb"))
    start, end = (
        datetime.fromtimestamp(T0 / 1000, UTC) - timedelta(hours=1),
        datetime.fromtimestamp(MIDNIGHT / 1000, UTC) + timedelta(hours=1),
    )
    ran = 0
    with psycopg.connect(dsn) as conn:
        for path in DASHBOARDS:
            for var in json.loads(path.read_text()).get("templating", {}).get("list", []):
                if var["type"] == "query":
                    rows = conn.execute(var["query"]).fetchall()
                    assert (SYM,) in rows, (path.stem, var["name"], rows)
        for label, panel in panels():
            for tf in ("1m", "5m", "15m"):
                for target in panel["targets"]:
                    sql = expand(
                        target["rawSql"],
                        {"symbol": SYM, "timeframe": tf, "__interval": "1m"},
                        start,
                        end,
                        timescaledb,
                    )
                    cur = conn.execute(sql)
                    cols = [d.name for d in cur.description or []]
                    rows = cur.fetchall()
                    assert cols == expected_columns(panel), f"{label} ({tf}): {cols}"
                    if panel["type"] == "timeseries":
                        assert rows, f"{label} ({tf}): no rows"
                    ran += 1
                if "$timeframe" not in json.dumps(panel):
                    break
    return ran


def test_every_panel_has_time_macros_and_named_columns() -> None:
    assert {p.stem for p in DASHBOARDS} == {"ingest", "features"}
    for label, panel in panels():
        sql = " ".join(t["rawSql"] for t in panel["targets"])
        if panel["type"] == "timeseries":
            assert "$__timeFilter(" in sql and "$__timeGroupAlias(" in sql and "'$symbol'" in sql, label
            assert expected_columns(panel)[1:], label
    titles = " ".join(label for label, _ in panels())
    for topic in ("OHLC", "vwap", "volume delta", "imbalance", "Spread", "intensity", "Large trades", "Funding",
                  "premium", "Open interest", "Liquidations", "lower bounds", "Book depth"):  # fmt: skip
        assert topic in titles, topic


def test_expansion_matches_grafana() -> None:
    t0, t1 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    got = expand("SELECT $__timeGroupAlias(ts, $__interval), x FROM t WHERE s = '$symbol' AND $__timeFilter(ts)",
                 {"symbol": "BTCUSDT", "__interval": "5m"}, t0, t1, True)  # fmt: skip
    assert got == ("SELECT time_bucket('300.000s',ts) AS \"time\", x FROM t WHERE s = 'BTCUSDT' AND "
                   "ts BETWEEN '2026-03-01T00:00:00Z' AND '2026-03-02T00:00:00Z'")  # fmt: skip


def test_dashboard_queries_on_postgresql(db_url: str) -> None:
    run(write_cases(db_url))
    run(_refresh(db_url))
    assert check_dashboards(db_url) > 20


@pytest.mark.pglite
def test_dashboard_queries_on_timescaledb(db_url: str, pglite_url: str) -> None:
    from microstructure.db import migrate

    migrate.downgrade(pglite_url)
    migrate.upgrade(pglite_url)
    try:
        run(write_cases(db_url))
        copy_raw_rows(db_url, pglite_url)
        run(_refresh(pglite_url, everything=True))
        assert check_dashboards(pglite_url) > 20
    finally:
        migrate.downgrade(pglite_url)


async def _refresh(dsn: str, everything: bool = False) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if everything:
            await refresher.refresh_range(conn, force=False)
        else:
            await refresher.refresh_pending(conn)
    finally:
        await conn.close()
