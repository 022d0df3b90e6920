"""Live aggregate-trade ingest: offered and received rates, lag, staleness, collector and database CPU.

    python bench/bench_live.py [--symbols 2] [--live-rate 3000] [--seconds 60] [--warmup 5] [--uvloop]
    python bench/bench_live.py --sets 500,1500,3000 --seconds 30     # one run per rate, alternating
    python bench/bench_live.py --symbol-sets 2,30,100,300 --total-rate 3000 --seconds 20   # cost per message

The local exchange (its own process) streams `--live-rate` aggregate trades per second per symbol
(clustered arrivals; offered = rate x symbols on average); `collect_aggtrades_live` runs in this
process with the project writer on a fresh database (embedded PostgreSQL in its own processes).
Per row that came from the websocket:
- lag = local receive time - exchange trade time T (how late the stream delivers);
- staleness = the commit time of the row's transaction - its receive time (how long until a query
  sees it: parse, batching, queueing, COPY, coverage, commit).
CPU: this process's user + system time over the measured wall time (the collector), and the
embedded server's processes' (postmaster and its children, from /proc) over the same window.
First trade: seconds from calling the collector to the first committed websocket row.
Lost ids: per symbol, ids between the first and last stored that are not stored (after the run's
REST fills), and whether the exchange dropped the connection as too slow (reconnects).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import live_setup, quantile

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]


def symbols_for(n: int) -> list[str]:
    """The first `n` symbols: the six known ones, then generic contracts (S0007USDT, ...)."""
    return (SYMBOLS + [f"S{i:04d}USDT" for i in range(len(SYMBOLS) + 1, n + 1)])[:n]


TICK = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pgdata: Path) -> float:
    """User + system CPU seconds of the embedded server: its postmaster and the postmaster's children."""
    try:
        root = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        if pid == root or ppid == root:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


async def measure(
    settings, dsn: str, symbols: list[str], warmup: float, seconds: float, pgdata: Path
) -> dict:  # type: ignore[no-untyped-def]
    import numpy as np

    from microstructure.ingest.collectors.trades_live import collect_aggtrades_live
    from microstructure.ingest.health import Health
    from microstructure.ingest.sink.writer import Writer

    window = {"on": False}
    stale: list[np.ndarray] = []
    lag: list[np.ndarray] = []
    first = {"at": None}
    started = time.time()

    committed: list[tuple[float, object]] = []  # (commit time, batch): decoded after the window, so
    # the hook (called per symbol of a commit) costs the measured process next to nothing

    def on_commit(kind: str, symbol: str, batch, inserted: int) -> None:  # type: ignore[no-untyped-def]
        if kind != "agg_trades":
            return
        now = time.time() * 1000
        if first["at"] is None and batch.column("recv_ms").null_count < batch.num_rows:
            first["at"] = now / 1000 - started
        if window["on"]:
            committed.append((now, batch))

    def decode() -> None:
        for now, batch in committed:
            recv = batch.column("recv_ms")  # type: ignore[attr-defined]
            if recv.null_count == len(recv):
                continue
            live = batch.filter(recv.is_valid())  # type: ignore[attr-defined]
            r = live.column("recv_ms").to_numpy()
            stale.append(now - r)
            lag.append(r - live.column("ts_ms").to_numpy())

    health = Health()
    stop = asyncio.Event()
    writer = Writer(dsn, settings.home / "spill", on_commit=on_commit)
    await writer.start()
    task = asyncio.create_task(
        collect_aggtrades_live(settings, dsn, symbols, stop_event=stop, health=health, writer=writer)
    )

    w = await measure_window(health, pgdata, window, warmup, seconds)
    stop.set()
    report = await task
    await writer.close()
    decode()
    st = np.concatenate(stale) if stale else np.empty(0)
    lg = np.concatenate(lag) if lag else np.empty(0)
    return {
        "messages": w.messages,
        **w.shares(),
        "rows_measured": len(st),
        "stale_p50": quantile(list(st), 0.5),
        "stale_p99": quantile(list(st), 0.99),
        "stale_max": float(st.max()) if len(st) else float("nan"),
        "lag_p50": quantile(list(lg), 0.5),
        "lag_p99": quantile(list(lg), 0.99),
        "first_s": first["at"],
        "report": report,
    }


@dataclass(frozen=True)
class Measured:
    """What one measured window of a live run cost: messages received, collector and server CPU."""

    messages: int
    cpu_s: float
    db_cpu_s: float
    wall_s: float

    def shares(self) -> dict[str, float]:
        w = self.wall_s
        return {
            "msg_per_s": self.messages / w, "cpu_share": self.cpu_s / w, "db_cpu_share": self.db_cpu_s / w,
            "wall_s": w,
        }  # fmt: skip


async def measure_window(health: Any, pgdata: Path, window: dict, warmup: float, seconds: float) -> Measured:
    """After `warmup` s, `seconds` of the run measured (`window["on"]` while they last): messages the
    collector's connections received, its CPU (this process) and the embedded server's."""

    def received() -> int:
        return sum(v.messages for k, v in health.streams.items() if "#" in k)  # the connections

    await asyncio.sleep(warmup)
    window["on"] = True
    m0, c0, d0, t0 = received(), time.process_time(), server_cpu_s(pgdata), time.monotonic()
    await asyncio.sleep(seconds)
    m1, c1, d1, t1 = received(), time.process_time(), server_cpu_s(pgdata), time.monotonic()
    window["on"] = False
    return Measured(m1 - m0, c1 - c0, d1 - d0, t1 - t0)


def lost_ids(dsn: str, symbols: list[str]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {
            s: int(
                conn.execute(
                    "SELECT coalesce(max(agg_id) - min(agg_id) + 1 - count(*), 0) FROM agg_trades WHERE symbol = %s",
                    (s,),
                ).fetchone()[0]  # type: ignore[index]
            )
            for s in symbols
        }


def one(rate: float, args: argparse.Namespace, n_symbols: int | None = None) -> dict:
    symbols = symbols_for(n_symbols or args.symbols)
    if args.total_rate:
        rate = args.total_rate / len(symbols)
    extra = ["--history-days", "0", "--live-rate", str(rate)]
    with live_setup(symbols, *extra) as (settings, dsn):
        pgdata = Path(settings.home).parent / "pg" / "pgdata"  # type: ignore[attr-defined]
        runner = asyncio.run
        if args.uvloop:
            import uvloop

            runner = uvloop.run  # type: ignore[assignment]
        r = runner(measure(settings, dsn, symbols, args.warmup, args.seconds, pgdata))
        r["lost"] = lost_ids(dsn, symbols)
    report = r["report"]
    offered = rate * len(symbols)
    print(
        f"{len(symbols)} symbols at {rate:g} trades/s each: offered {offered:,.0f} msg/s, received "
        f"{r['msg_per_s']:,.0f} msg/s over {r['wall_s']:.0f} s"
    )
    print(
        f"  staleness (commit - receive) over {r['rows_measured']:,} rows: p50 {r['stale_p50']:.0f} ms, "
        f"p99 {r['stale_p99']:.0f} ms, max {r['stale_max']:.0f} ms; lag (receive - T): p50 {r['lag_p50']:.0f} ms, "
        f"p99 {r['lag_p99']:.0f} ms"
    )
    per_k = 100 * r["cpu_share"] / (r["msg_per_s"] / 1000) if r["msg_per_s"] else float("nan")
    print(
        f"  collector CPU {100 * r['cpu_share']:.1f} % of a core ({per_k:.2f} % per 1,000 msg/s); "
        f"database CPU {100 * r['db_cpu_share']:.1f} %; first trade stored {r['first_s']:.2f} s after start"
    )
    rest = sum(s.rest_rows for s in report.symbols.values())
    print(f"  ids lost: {sum(r['lost'].values())}; by REST: {rest:,}; reconnects: {report.reconnects}")
    if args.verbose:
        print("\n".join("  " + x for x in report.summary_lines()))
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=2)
    p.add_argument("--live-rate", type=float, default=3000.0, help="aggregate trades per second per symbol")
    p.add_argument(
        "--total-rate",
        type=float,
        default=None,
        help="aggregate trades per second over all symbols (overrides --live-rate)",
    )
    p.add_argument("--sets", help="comma-separated live rates: one run each (overrides --live-rate)")
    p.add_argument(
        "--symbol-sets",
        help="comma-separated symbol counts: one run each at the same --total-rate, then a table of "
        "the CPU per message against the first (issue 25's acceptance: 300 symbols <= 1.5x of 2)",
    )
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--uvloop", action="store_true", help="run the collector on uvloop (if installed)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run's summary too")
    args = p.parse_args()
    ok = True
    if args.symbol_sets:
        rows = []
        for n in [int(x) for x in args.symbol_sets.split(",")]:
            r = one(args.live_rate, args, n)
            ok = ok and sum(r["lost"].values()) == 0
            per_k = 100 * r["cpu_share"] / (r["msg_per_s"] / 1000) if r["msg_per_s"] else float("nan")
            rows.append((n, r, per_k))
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(
            "| symbols | msg/s received | collector CPU | per 1,000 msg/s | vs first | staleness p50 / p99 |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for n, r, per_k in rows:
            print(
                f"| {n} | {r['msg_per_s']:,.0f} | {100 * r['cpu_share']:.1f} % | {per_k:.2f} % | "
                f"{per_k / rows[0][2]:.2f}x | {r['stale_p50']:.0f} / {r['stale_p99']:.0f} ms |"
            )
        return 0 if ok else 1
    rates = [float(x) for x in args.sets.split(",")] if args.sets else [args.live_rate]
    for rate in rates:
        r = one(rate, args)
        ok = ok and sum(r["lost"].values()) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
