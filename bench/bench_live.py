"""Live aggregate-trade ingest: sustained message rate, receive-to-committed latency, CPU share.

    python bench/bench_live.py [--symbols 2] [--live-rate 3000] [--seconds 60] [--warmup 5]

The local exchange (its own process) streams `--live-rate` aggregate trades per second per symbol
(clustered arrivals); `collect_aggtrades_live` runs in this process with the project writer on a
fresh database (embedded PostgreSQL unless MICROSTRUCTURE_DATABASE_URL). For every row that came
from the websocket, latency = the time its batch's transaction committed minus the row's local
receive time (recv_ms), so it covers parsing, batching (by count or 250 ms), queueing, COPY, merge
and coverage. CPU share: this process's user + system time over the measured wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import live_setup, quantile

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]


async def measure(settings, dsn: str, symbols: list[str], warmup: float, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    import numpy as np

    from microstructure.ingest.collectors.trades_live import collect_aggtrades_live
    from microstructure.ingest.health import Health
    from microstructure.ingest.sink.writer import Writer

    window = {"on": False}
    latencies: list[np.ndarray] = []

    def on_commit(kind: str, symbol: str, batch, inserted: int) -> None:  # type: ignore[no-untyped-def]
        if not window["on"]:
            return
        recv = batch.column("recv_ms").drop_null().to_numpy()
        if len(recv):
            latencies.append(time.time() * 1000 - recv)

    health = Health()
    stop = asyncio.Event()
    writer = Writer(dsn, settings.home / "spill", on_commit=on_commit)
    await writer.start()
    task = asyncio.create_task(
        collect_aggtrades_live(settings, dsn, symbols, stop_event=stop, health=health, writer=writer)
    )

    def received() -> int:
        return sum(v.messages for k, v in health.streams.items() if "#" in k)  # the connections

    await asyncio.sleep(warmup)
    window["on"] = True
    m0, c0, t0 = received(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    m1, c1, t1 = received(), time.process_time(), time.monotonic()
    window["on"] = False
    stop.set()
    report = await task
    await writer.close()
    lat = np.concatenate(latencies) if latencies else np.empty(0)
    wall = t1 - t0
    return {
        "messages": m1 - m0,
        "msg_per_s": (m1 - m0) / wall,
        "cpu_share": (c1 - c0) / wall,
        "wall_s": wall,
        "rows_measured": len(lat),
        "p50_ms": quantile(list(lat), 0.5),
        "p99_ms": quantile(list(lat), 0.99),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
        "report": report,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=2)
    p.add_argument("--live-rate", type=float, default=3000.0, help="aggregate trades per second per symbol")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    args = p.parse_args()

    symbols = SYMBOLS[: args.symbols]
    extra = ["--history-days", "0", "--live-rate", str(args.live_rate)]
    with live_setup(symbols, *extra) as (settings, dsn):
        r = asyncio.run(measure(settings, dsn, symbols, args.warmup, args.seconds))
    report = r["report"]
    print(
        f"{len(symbols)} symbols at {args.live_rate:g} trades/s each (offered), {r['wall_s']:.0f} s measured"
    )
    print(f"received {r['messages']:,} messages = {r['msg_per_s']:,.0f}/s")
    print(
        f"receive-to-committed latency over {r['rows_measured']:,} rows: p50 {r['p50_ms']:.0f} ms, "
        f"p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms"
    )
    print(f"collector CPU: {100 * r['cpu_share']:.0f} % of a core")
    print("\n".join(report.summary_lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
