"""A historical backfill with its features, each part against a bound measured in the same run.

    python bench/bench_backfill.py [--days 3] [--trades-per-day 2500000] [--rounds 3]

The local exchange (its own process) serves `--days` complete BTCUSDT-like days of daily aggTrades
archives (generated once per seed, cached under --cache-dir, fetched once before timing). Each
round, on fresh databases of one embedded server:

1. **load**: `collect_aggtrades_historical` of the days in one call (the bulk path), no features;
2. **bare scan**: `SELECT symbol, time_bucket('1 minute', ts), count(*), sum(quantity) FROM agg_trades
   GROUP BY 1, 2` over the loaded rows (best of 3; the project's time_bucket on plain PostgreSQL);
3. **refresh**: `refresh_once` of what the load logged (every feature stage of the days);
4. **bound**: `CREATE TABLE (LIKE agg_trades)` (no index) and `INSERT INTO it SELECT * FROM agg_trades`
   in one transaction, the rows already in the server's cache: what the server takes to store the
   rows with no index, no parse and no client (on the embedded server's minimal WAL a table made in
   its transaction writes no WAL, as the bulk path's day tables do); and the same INSERT into such a
   table made before, in its own transaction (WAL-logged rows: the slower, looser bound);
5. **the command**: in another fresh database, `collect aggtrades --mode historical` as the CLI runs
   it (`ingest.cli.run_historical`: migrations, the load, the features, the report), end to end.

Ratios: load rows/s over the bound's (target >= 0.7), refresh over the bare scan (target <= 2.0,
aim 1.5), the command's seconds (target: 3 days in <= 10 s), and the command against steps 1 and 3
one after the other (what the command did before it refreshed beside the load). A CHECKPOINT
before each timed step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    add_archive_args,
    archive_exchange,
    database,
    drop_database,
    stop_database,
    warm_archives,
)

BARE_SCAN = (
    "SELECT count(*) FROM (SELECT symbol, time_bucket('1 minute', ts), count(*), sum(quantity) "
    "FROM agg_trades GROUP BY 1, 2) s"
)


def sql(dsn: str, *statements: str, transaction: bool = False) -> float:
    """Run the statements (one transaction when asked); the seconds they took."""
    import psycopg

    with psycopg.connect(dsn, autocommit=not transaction) as conn:
        t0 = time.perf_counter()
        for s in statements:
            conn.execute(s)
        conn.commit()
        return time.perf_counter() - t0


def settings_for(tmp: Path, dsn: str, base: str, name: str):  # type: ignore[no-untyped-def]
    from microstructure.config import Settings

    settings = Settings(database_url=dsn, home=tmp / f"home-{name}")
    settings.point_at_exchange(base)
    return settings


def one_round(k: int, tmp: Path, base: str, args: argparse.Namespace, days: list) -> dict[str, float]:  # type: ignore[type-arg]
    from microstructure.features_sql.refresher import refresh_once
    from microstructure.ingest.cli import run_historical
    from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

    out: dict[str, float] = {}
    dsn, _ = database(tmp)
    settings = settings_for(tmp, dsn, base, f"load{k}")
    sql(dsn, "CHECKPOINT")
    t0 = time.perf_counter()
    report = asyncio.run(
        collect_aggtrades_historical(
            settings, dsn, [args.symbol], days[0], days[-1], progress=False, use_monthly=False
        )
    )
    out["load"] = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit("\n".join(report.summary_lines()))
    out["rows"] = report.rows
    sql(dsn, "VACUUM (ANALYZE) agg_trades", "CHECKPOINT")  # what autovacuum would do meanwhile
    out["scan"] = min(sql(dsn, BARE_SCAN) for _ in range(3))
    sql(dsn, "CHECKPOINT")
    t0 = time.perf_counter()
    refreshed = asyncio.run(refresh_once(dsn))
    out["refresh"] = time.perf_counter() - t0
    out["stage_rows"] = refreshed.rows_written
    sql(dsn, "CHECKPOINT")
    sql(dsn, "SELECT count(*) FROM agg_trades")  # the rows in cache, as the bound's SELECT wants them
    out["bound"] = sql(
        dsn,
        "CREATE TABLE bound_copy (LIKE agg_trades INCLUDING DEFAULTS)",
        "INSERT INTO bound_copy SELECT * FROM agg_trades",
        transaction=True,
    )
    sql(
        dsn,
        "DROP TABLE bound_copy",
        "CREATE TABLE bound_copy (LIKE agg_trades INCLUDING DEFAULTS)",
        "CHECKPOINT",
    )
    out["bound_logged"] = sql(dsn, "INSERT INTO bound_copy SELECT * FROM agg_trades")  # a table made before
    drop_database(dsn)

    dsn, _ = database(tmp)
    settings = settings_for(tmp, dsn, base, f"cli{k}")
    sql(dsn, "CHECKPOINT")
    printed = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = run_historical(
            settings, [args.symbol], start=days[0], end=days[-1], progress=False, use_monthly=False
        )
    out["command"] = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"run_historical exited {code}:\n{printed.getvalue()}")
    import psycopg

    with psycopg.connect(dsn) as conn:
        bars = conn.execute("SELECT count(*) FROM features_1m").fetchone()[0]  # type: ignore[index]
    out["bars"] = bars
    print(
        f"  round {k + 1}: " + ", ".join(f"{n} {v:,.2f}" for n, v in out.items()), file=sys.stderr, flush=True
    )
    print("  " + printed.getvalue().strip().replace("\n", "\n  "), file=sys.stderr, flush=True)
    drop_database(dsn)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_args(p, days=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = None
        with archive_exchange(args) as (base, days):
            try:
                warm_archives(base, args.symbol, days)
                dsn, server = database(tmp)
                drop_database(dsn)
                for k in range(args.rounds):
                    rounds.append(one_round(k, tmp, base, args, days))
            finally:
                stop_database(server)

    print(
        f"{args.days} days of {args.symbol}, --trades-per-day {args.trades_per_day:,}, {rounds[0]['rows']:,.0f} rows"
    )
    print()
    print("| round | load s | bound s | load / bound (rows/s) | logged bound s | load / logged bound | bare scan s "
          "| refresh s | refresh / scan | load + refresh, one after the other, s | the command, s (load + features) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, r in enumerate(rounds):
        print(f"| {k + 1} | {r['load']:.2f} | {r['bound']:.2f} | {r['bound'] / r['load']:.2f} "
              f"| {r['bound_logged']:.2f} | {r['bound_logged'] / r['load']:.2f} | {r['scan']:.2f} "
              f"| {r['refresh']:.2f} | {r['refresh'] / r['scan']:.2f} | {r['load'] + r['refresh']:.2f} | {r['command']:.2f} |")  # fmt: skip
    print()
    for name, f in (
        ("load / bound", lambda r: r["bound"] / r["load"]),
        ("load / logged bound", lambda r: r["bound_logged"] / r["load"]),
        ("refresh / scan", lambda r: r["refresh"] / r["scan"]),
        ("command s", lambda r: r["command"]),
        ("command / (load + refresh)", lambda r: r["command"] / (r["load"] + r["refresh"])),
    ):
        v = [f(r) for r in rounds]
        print(f"{name}: median {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
