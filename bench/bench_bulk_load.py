"""Historical aggregate-trade load into day partitions: the bulk path vs the writer's direct COPY.

    python bench/bench_bulk_load.py [--days 30] [--trades-per-day 2500000] [--symbol BTCUSDT]
        [--paths new,old,flat] [--one-call] [--rounds 1] [--wal-compression on|off]
        [--wal-level minimal|replica] [--max-wal-size 8GB] [--checkpoint-timeout 15min]
        [--wal-init-zero on|off] [--wal-buffers 64MB]

The local exchange (its own process) serves `--days` complete BTCUSDT-like days of daily aggTrades
archives (generated once per seed, cached under --cache-dir and fetched once before timing). Its
clock starts just after midnight of the day after the last, so the run is the archive path alone.

Each path loads the same days into its own fresh database of the same embedded server, one
`collect_aggtrades_historical` call per day, oldest first (so a day's time also shows whether the
cost grows with what is already stored). The paths take turns a day at a time (day 1 of each path,
then day 2, ...): a machine that slows down or speeds up during the run weighs on every path alike.

- new: `bulk_load=True`, every day has no partition yet, so sink/bulk.py loads it (fresh table,
  COPY FREEZE, index builds, CHECK, ATTACH, session wal_compression off);
- old: `bulk_load=False`, every row through the writer's direct binary COPY into the day's indexed
  partition (created empty by the writer);
- flat: today's path before day partitions (revision 0005's layout: one unpartitioned agg_trades,
  made by `microstructure_unpartition('agg_trades')` after the migrations), every row through the
  writer's direct binary COPY into the one indexed table.

A call's time includes everything a day costs: download, sha256, unzip, parse, sort, encode, the
database work, coverage and checkpoint (one call a day also means no prefetch of the next day's
archive; `--one-call` loads each path's whole range in one call instead, as a real backfill does,
and reports totals only). Per day: rows, seconds, rows/s, the day partition's pg_total_relation_size
and the WAL the server wrote meanwhile. Per path: total rows/s, the slope of a least-squares line
through rows/s over the day index (rows/s per day, and in % of the mean), checkpoints taken, the
collector's CPU seconds and the whole machine's (/proc/stat, both cores: the server's share is the
difference), and how long a VACUUM (ANALYZE) of what the call wrote took after it (untimed: what
the load left for autovacuum, done before the next call rather than on its time). The server
settings may be changed for the run (ALTER SYSTEM + reload, or a restart for wal_level) to compare
them.

`--rounds N` repeats the whole comparison N times, each round into fresh databases, the paths'
order turned around every other round (with --one-call the paths run one after the other, so the
first would otherwise always meet the machine as it was first); it ends with each round's
rows/s per path, the ratios and their median: on a machine whose speed drifts by 2x within minutes
(a shared VM), one round's ratio is one sample.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
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

SHOWN = ("wal_level", "wal_compression", "wal_init_zero", "wal_buffers", "maintenance_work_mem", "max_wal_size",
         "checkpoint_timeout", "shared_buffers", "synchronous_commit")  # fmt: skip
PATHS = {"new": True, "old": False, "flat": False}  # name -> bulk_load
# every relation of agg_trades: the table (or the partitioned parent), its day partitions, their indexes
TOTAL_SIZE = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c WHERE c.relkind IN ('r', 'p') "
    "AND (c.relname = 'agg_trades' OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'agg_trades'::regclass))"
)

# the day partitions of agg_trades for the days [d0, d1] (names agg_trades_pYYYYMMDD), or agg_trades
# itself when it is not partitioned (flat)
WRITTEN_TABLES = (
    "SELECT coalesce(string_agg(format('%I', c.relname), ', '), 'agg_trades') FROM pg_inherits i "
    "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'agg_trades'::regclass "
    "AND c.relname IN (SELECT format('agg_trades_p%s', to_char(g, 'YYYYMMDD')) "
    "FROM generate_series(date '{d0}', date '{d1}', interval '1 day') g)"
)


@dataclass
class PathRun:
    name: str
    rows: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    disk: list[int] = field(default_factory=list)
    wal: list[int] = field(default_factory=list)
    rows_bulk: int = 0
    cpu_s: float = 0.0
    machine_s: float = 0.0
    vacuum_s: float = 0.0
    checkpoints: int = 0

    @property
    def rate(self) -> list[float]:
        return [r / s for r, s in zip(self.rows, self.seconds, strict=True)]

    @property
    def total_rate(self) -> float:
        return sum(self.rows) / sum(self.seconds)

    def slope(self) -> float:
        """rows/s gained (negative: lost) per day loaded, least squares over the day index."""
        import numpy as np

        if len(self.rows) < 2:
            return float("nan")
        return float(np.polyfit(np.arange(len(self.rows)), np.asarray(self.rate), 1)[0])


def admin_sql(dsn: str, *statements: str) -> list[object]:
    import psycopg

    out: list[object] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            cur = conn.execute(s)
            out.append(cur.fetchone()[0] if cur.description else None)  # type: ignore[index]
    return out


def checkpoints(dsn: str) -> int:
    """Checkpoints the server has taken (timed + requested), PostgreSQL 17+ or older."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pg_catalog.pg_stat_checkpointer')").fetchone()[0]:  # type: ignore[index]
            q = "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
        else:
            q = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        return int(conn.execute(q).fetchone()[0])  # type: ignore[index]


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core; /proc/stat, idle and iowait left out)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """One path's fresh database and the settings its collector calls use."""

    run: PathRun
    dsn: str
    settings: object


def start_path(name: str, tmp: Path, base: str) -> Target:
    from microstructure.config import Settings

    dsn, _server = database(tmp)
    settings = Settings(database_url=dsn, home=tmp / f"home-{name}")
    settings.point_at_exchange(base)
    if name == "flat":
        admin_sql(dsn, "SELECT microstructure_unpartition('agg_trades')")
    return Target(PathRun(name), dsn, settings)


def load_span(t: Target, args: argparse.Namespace, d: date, d_end: date) -> None:
    """One collector call for [d, d_end] into the path's database, measured."""
    from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

    run, dsn = t.run, t.dsn
    admin_sql(dsn, "CHECKPOINT")  # what the call before left behind is not this call's cost
    ck0 = checkpoints(dsn)
    lsn0, size0 = admin_sql(dsn, "SELECT pg_current_wal_lsn()::text", TOTAL_SIZE)
    c0, m0 = time.process_time(), machine_busy_s()
    t0 = time.perf_counter()
    report = asyncio.run(
        collect_aggtrades_historical(
            t.settings,
            dsn,
            [args.symbol],
            d,
            d_end,
            progress=False,
            use_monthly=False,
            bulk_load=PATHS[run.name],
        )
    )  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    run.cpu_s += time.process_time() - c0
    run.machine_s += machine_busy_s() - m0
    if not report.ok:
        raise SystemExit("\n".join(report.summary_lines()))
    # what the load left for autovacuum (hint bits, visibility map, statistics) is done now, not
    # timed but shown: else a worker would do it on the next call's time, maybe the other path's
    # (after a 3-day flat load it takes 0.9-2.2 s; after the bulk path's frozen days 0.7 s). Only
    # the tables the call wrote, as autovacuum would: the call's day partitions, or the flat table
    # (a VACUUM of the partitioned parent visits and analyzes every day partition, each call again)
    (written,) = admin_sql(dsn, WRITTEN_TABLES.format(d0=d.isoformat(), d1=d_end.isoformat()))
    v0 = time.perf_counter()
    admin_sql(dsn, f"VACUUM (ANALYZE) {written}")
    run.vacuum_s += time.perf_counter() - v0
    sym = report.symbols[args.symbol]
    size1, wal = admin_sql(dsn, TOTAL_SIZE, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}')::bigint")
    size = int(size1) - int(size0)  # type: ignore[call-overload]
    run.checkpoints += checkpoints(dsn) - ck0
    run.rows.append(sym.rows)
    run.seconds.append(dt)
    run.disk.append(size)
    run.wal.append(int(wal))  # type: ignore[call-overload]
    run.rows_bulk += sym.rows_bulk
    print(f"  {run.name} {d}: {sym.rows:,} rows in {dt:.1f} s ({sym.rows / dt:,.0f} rows/s, "
          f"bulk {sym.rows_bulk:,}, {size / 2**20:,.0f} MB)", file=sys.stderr, flush=True)  # fmt: skip


def finish_path(t: Target) -> None:
    (n,) = admin_sql(t.dsn, "SELECT count(*) FROM agg_trades")
    if n != sum(t.run.rows):
        raise SystemExit(f"{t.run.name}: {n:,} rows stored, {sum(t.run.rows):,} reported")
    drop_database(t.dsn)  # free the disk


def run_paths(
    paths: list[str], k: int, tmp: Path, base: str, args: argparse.Namespace, days: list[date]
) -> dict[str, PathRun]:
    """Round `k` of the paths, in the order `runs_order` gives it: a day at a time in turn (day 1
    of each path, then day 2, ...), so that a machine slowing down or speeding up during the run
    weighs on all paths alike; with --one-call, each path's whole range in one call, one path after
    the other. The runs come back in the order of `paths` (--paths)."""
    targets = [start_path(n, tmp, base) for n in runs_order(k, paths)]
    if args.one_call:  # each database checked and dropped before the next path runs: the same disk
        for t in targets:
            load_span(t, args, days[0], days[-1])
            finish_path(t)
    else:
        for d in days:
            for t in targets:
                load_span(t, args, d, d)
        for t in targets:
            finish_path(t)
    by_name = {t.run.name: t.run for t in targets}
    return {n: by_name[n] for n in paths}


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


RATIOS = (("new", "flat"), ("old", "flat"), ("new", "old"))


def runs_order(k: int, paths: list[str]) -> list[str]:
    """The order the paths ran in round k (0-based): turned around every other round."""
    return paths if k % 2 == 0 else paths[::-1]


def print_round(runs: dict[str, PathRun], days: list[date]) -> None:
    """One round's tables: per day (or per call), per path, the ratios."""
    head = ["day"] + [f"{n} {c}" for n in runs for c in ("rows", "s", "rows/s", "MB", "WAL MB")]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for i, d in enumerate(days):
        cells = [d.isoformat()]
        for r in runs.values():
            cells += [
                f"{r.rows[i]:,}",
                f"{r.seconds[i]:.1f}",
                f"{r.rate[i]:,.0f}",
                mb(r.disk[i]),
                mb(r.wal[i]),
            ]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "| path | rows | s | rows/s | slope (rows/s per day) | MB per day | WAL MB per day | checkpoints "
        "| collector CPU s | machine CPU s (2 cores) | VACUUM after, s (not in s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs.values():
        n = len(r.rows)
        slope = r.slope()
        print(f"| {r.name} (bulk_load={PATHS[r.name]}; {r.rows_bulk:,} rows bulk) | {sum(r.rows):,} "
              f"| {sum(r.seconds):.1f} | {r.total_rate:,.0f} | {slope:+,.0f} ({100 * slope / (sum(r.rate) / n):+.2f} %) "
              f"| {mb(sum(r.disk) / n)} | {mb(sum(r.wal) / n)} | {r.checkpoints} | {r.cpu_s:.1f} "
              f"| {r.machine_s:.1f} | {r.vacuum_s:.1f} |")  # fmt: skip
    print()
    for a, b in RATIOS:
        if a in runs and b in runs:
            x, y = runs[a], runs[b]
            print(f"ratio {a} / {b} rows/s: {x.total_rate / y.total_rate:.2f}   "
                  f"disk: {sum(x.disk) / sum(y.disk):.2f}   WAL: {sum(x.wal) / sum(y.wal):.2f}  ")  # fmt: skip


def print_rounds(rounds: list[dict[str, PathRun]]) -> None:
    """Every round's rows/s per path and ratios, and the ratios' median and range."""
    names = list(rounds[0])
    pairs = [(a, b) for a, b in RATIOS if a in rounds[0] and b in rounds[0]]
    print()
    head = ["round"] + [f"{n} rows/s" for n in names] + [f"{a} / {b}" for a, b in pairs]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for k, runs in enumerate(rounds):
        cells = [str(k + 1)] + [f"{runs[n].total_rate:,.0f}" for n in names]
        cells += [f"{runs[a].total_rate / runs[b].total_rate:.2f}" for a, b in pairs]
        print("| " + " | ".join(cells) + " |")
    print()
    for a, b in pairs:
        r = [runs[a].total_rate / runs[b].total_rate for runs in rounds]
        print(f"ratio {a} / {b} over {len(rounds)} rounds: median {statistics.median(r):.2f}, "
              f"min {min(r):.2f}, max {max(r):.2f}  ")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_args(p, days=30)
    p.add_argument("--paths", default="new,old,flat", help="which paths, in this order (new, old, flat)")
    p.add_argument(
        "--one-call", action="store_true",
        help="all days in one collector call (archive prefetch overlaps the loads; totals only)",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=1,
        help="repeat the comparison in fresh databases, the paths' order turned every other round",
    )  # fmt: skip
    p.add_argument("--wal-compression", choices=("on", "off"), help="server setting for the run")
    p.add_argument("--max-wal-size", help="server setting for the run, e.g. 8GB")
    p.add_argument("--checkpoint-timeout", help="server setting for the run, e.g. 15min")
    p.add_argument("--wal-init-zero", choices=("on", "off"), help="server setting for the run")
    p.add_argument(
        "--wal-level", choices=("minimal", "replica"), help="server setting for the run (restarts it)"
    )
    p.add_argument("--wal-buffers", help="server setting for the run, e.g. 64MB (restarts it)")
    args = p.parse_args()
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not paths or any(x not in PATHS for x in paths):
        p.error(f"--paths: expected names from {sorted(PATHS)}")
    if args.rounds < 1:
        p.error("--rounds: at least 1")

    rounds: list[dict[str, PathRun]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = None
        with archive_exchange(args) as (base, days):
            try:
                warm_archives(base, args.symbol, days)
                dsn, server = database(tmp)
                changes = [(k, v) for k, v in (("wal_compression", args.wal_compression),
                           ("max_wal_size", args.max_wal_size), ("checkpoint_timeout", args.checkpoint_timeout),
                           ("wal_init_zero", args.wal_init_zero)) if v]  # fmt: skip
                if changes:
                    admin_sql(
                        dsn, *(f"ALTER SYSTEM SET {k} = '{v}'" for k, v in changes), "SELECT pg_reload_conf()"
                    )
                    time.sleep(1)  # the postmaster re-reads the files asynchronously
                if (args.wal_level or args.wal_buffers) and server is not None:
                    if args.wal_level:
                        senders = "0" if args.wal_level == "minimal" else "10"
                        admin_sql(dsn, f"ALTER SYSTEM SET wal_level = '{args.wal_level}'",
                                  f"ALTER SYSTEM SET max_wal_senders = {senders}")  # fmt: skip
                    if args.wal_buffers:
                        admin_sql(dsn, f"ALTER SYSTEM SET wal_buffers = '{args.wal_buffers}'")
                    server.stop()  # type: ignore[attr-defined]
                    server.ensure_running()  # type: ignore[attr-defined]
                shown = dict(zip(SHOWN, admin_sql(dsn, *(f"SHOW {s}" for s in SHOWN)), strict=True))
                (version,) = admin_sql(dsn, "SHOW server_version")
                drop_database(dsn)
                for k in range(args.rounds):
                    if args.rounds > 1:
                        print(f"round {k + 1} of {args.rounds}", file=sys.stderr, flush=True)
                    rounds.append(run_paths(paths, k, tmp, base, args, days))
            finally:
                stop_database(server)

    print(f"{args.days} days of {args.symbol}, --trades-per-day {args.trades_per_day:,}; PostgreSQL {version}; "
          + ", ".join(f"{k} = {v}" for k, v in shown.items()))  # fmt: skip
    for k, runs in enumerate(rounds):
        print()
        if args.rounds > 1:
            print(f"### round {k + 1} (paths in the order {', '.join(runs_order(k, paths))})")
            print()
        print_round(runs, [days[0]] if args.one_call else days)  # one call: one row, the whole range
    if args.rounds > 1:
        print_rounds(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
