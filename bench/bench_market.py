"""The whole market in one process: `collect all` on every contract of the local exchange's universe.

    python bench/bench_market.py [--universe 300] [--universe-rate 5000] [--seconds 120] [--warmup 20]

The local exchange (its own process) lists `--universe` synthetic perpetuals with `--universe-rate`
aggregate trades per second over all of them, Zipf-like. `collect_all` runs live in this process on
all of them: diff books (`<s>@depth@100ms`, REST snapshots, 500 ms samples), aggregate trades, mark
prices (`!markPrice@arr@1s`), liquidations (`!forceOrder@arr`), open interest and funding polls, on a
fresh database (embedded PostgreSQL, its own processes). The feature refresher and the live
reconciler are off (they are database work, measured elsewhere).

Reported, over the `--seconds` after `--warmup`:
- collector CPU: this process's user + system time over the wall time (share of one core);
- staleness of aggregate trades: commit time - receive time, p50 / p99;
- first rows: seconds from start until every symbol has a stored trade, a book sample and a mark;
- stop: seconds from setting the stop to collect_all returning;
- ids lost: per symbol, ids between the first and the last stored that are not stored;
- book slots missed: per symbol, 500 ms slots between its first and last sample with no sample.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_live import measure_window
from common import live_setup, quantile


async def measure(
    settings, dsn: str, symbols: list[str], warmup: float, seconds: float, pgdata: Path, book_source: str
) -> dict:  # type: ignore[no-untyped-def]
    import numpy as np

    from microstructure.ingest.collectors.all import collect_all
    from microstructure.ingest.health import Health
    from microstructure.ingest.sink.writer import Writer

    started = time.time()
    window = {"on": False}
    stale: list[np.ndarray] = []
    first: dict[str, dict[str, float]] = {"agg_trades": {}, "book_snapshots": {}, "mark_prices": {}}

    def on_commit(kind: str, symbol: str, batch, inserted: int) -> None:  # type: ignore[no-untyped-def]
        now = time.time()
        seen = first.get(kind)
        if seen is not None and symbol not in seen:
            seen[symbol] = now - started
        if kind != "agg_trades" or not window["on"]:
            return
        recv = batch.column("recv_ms")
        if recv.null_count == len(recv):
            return
        stale.append(now * 1000 - batch.filter(recv.is_valid()).column("recv_ms").to_numpy())

    health = Health()
    stop = asyncio.Event()
    writer = Writer(dsn, settings.home / "spill", on_commit=on_commit)
    await writer.start()
    task = asyncio.create_task(
        collect_all(
            settings, dsn, symbols, book_source=book_source, oi_interval=60, stop_event=stop, health=health,
            handle_signals=False, writer=writer, features_interval=None, reconcile_interval=None,
        )
    )  # fmt: skip

    w = await measure_window(health, pgdata, window, warmup, seconds)
    stop.set()
    s0 = time.monotonic()
    report = await task
    stop_s = time.monotonic() - s0
    await writer.close()
    st = np.concatenate(stale) if stale else np.empty(0)
    every = [max(first[k].get(s, float("inf")) for k in first) for s in symbols]
    return {
        **w.shares(),
        "stale_p50": quantile(list(st), 0.5),
        "stale_p99": quantile(list(st), 0.99),
        "first_rows_s": max(every),
        "first_rows_p50_s": float(np.median(every)),
        "stop_s": stop_s,
        "ok": report.ok,
        "summary": report.summary_lines(),
    }


def losses(dsn: str, symbols: list[str]) -> tuple[dict[str, int], dict[str, float]]:
    """(ids lost per symbol, share of book slots stored per symbol)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        lost = dict(
            conn.execute(
                "SELECT symbol, max(agg_id) - min(agg_id) + 1 - count(*) FROM agg_trades GROUP BY symbol"
            ).fetchall()
        )
        slots = {
            s: float(share)
            for s, share in conn.execute(
                "SELECT symbol, count(DISTINCT floor(extract(epoch FROM ts) * 2)) "
                "/ (floor(extract(epoch FROM max(ts)) * 2) - floor(extract(epoch FROM min(ts)) * 2) + 1) "
                "FROM book_snapshots GROUP BY symbol"
            ).fetchall()
        }
    return {s: int(lost.get(s, 0)) for s in symbols}, slots


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--universe", type=int, default=300)
    p.add_argument("--universe-rate", type=float, default=5000.0)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument(
        "--book-source",
        default="diff",
        choices=("diff", "depth20"),
        help="diff books (the issue's case) or depth20 snapshots (what the local exchange can generate "
        "for 300 symbols on a small machine: its diff-book generation is the bottleneck there)",
    )
    args = p.parse_args()
    from microstructure.exchange.config import universe_symbols

    symbols = universe_symbols(args.universe)
    extra = ["--history-days", "0", "--live-rate", "1", "--universe", str(args.universe),
             "--universe-rate", str(args.universe_rate)]  # fmt: skip
    with live_setup(["BTCUSDT"], *extra) as (settings, dsn):
        pgdata = Path(settings.home).parent / "pg" / "pgdata"  # type: ignore[attr-defined]
        r = asyncio.run(measure(settings, dsn, symbols, args.warmup, args.seconds, pgdata, args.book_source))
        lost, slots = losses(dsn, symbols)
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{len(symbols)} symbols, {args.book_source} books, {args.universe_rate:g} trades/s offered: received {r['msg_per_s']:,.0f} msg/s "
        f"over {r['wall_s']:.0f} s"
    )
    print(
        f"collector CPU {100 * r['cpu_share']:.1f} % of a core "
        f"({100 * r['cpu_share'] / (r['msg_per_s'] / 1000):.2f} % per 1,000 msg/s); "
        f"database CPU {100 * r['db_cpu_share']:.1f} %"
    )
    print(f"staleness (commit - receive) of trades: p50 {r['stale_p50']:.0f} ms, p99 {r['stale_p99']:.0f} ms")
    print(
        f"first rows of every symbol (trade, book sample, mark): {r['first_rows_s']:.1f} s "
        f"(median symbol {r['first_rows_p50_s']:.1f} s)"
    )
    print(f"stop: {r['stop_s']:.1f} s; report ok: {r['ok']}")
    worst = min(slots.values()) if slots else float("nan")
    print(
        f"ids lost: {sum(lost.values())} over {sum(1 for v in lost.values() if v)} symbols; book slots "
        f"stored: worst symbol {100 * worst:.1f} %, {sum(1 for v in slots.values() if v < 0.98)} symbols under 98 %"
        f" ({len(slots)} symbols with samples)"
    )
    for line in r["summary"]:
        text = line.strip()
        if text.startswith(("error", "stop:", "REST:", "aggtrades", "book", "market")) or "not ok" in text:
            print("  " + text)
    return 0 if r["ok"] and not sum(lost.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
