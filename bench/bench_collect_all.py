"""`collect all` benchmark: CPU of the collector process per 1,000 messages/s, 10 symbols.

    python bench/bench_collect_all.py [--symbols 10] [--live-rate 300] [--seconds 20] [--book-source depth20]

Starts `python -m microstructure.exchange serve` in its own process (its CPU is not counted) with
`--symbols` contracts and a live aggregate-trade rate per symbol, a database (MICROSTRUCTURE_DATABASE_URL,
else an embedded PostgreSQL in a temporary folder; the server's CPU is not counted either), then runs
`collect_all` live in this process. After a warm-up it measures, over `--seconds`, the process CPU
time (user + system) and the websocket messages received by every collector, and reports the CPU
per 1,000 messages/s: the share of one core that each 1,000 messages per second cost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import live_setup

SYMBOLS = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "AVAXUSDT", "LINKUSDT",
    "DOTUSDT", "LTCUSDT", "TRXUSDT", "NEARUSDT", "ATOMUSDT", "UNIUSDT", "APTUSDT",
]  # fmt: skip


async def measure(settings, dsn: str, symbols: list[str], source: str, warmup: float, seconds: float) -> dict:
    from microstructure.ingest.collectors.all import collect_all
    from microstructure.ingest.health import Health

    health = Health()
    stop = asyncio.Event()
    task = asyncio.create_task(
        collect_all(
            settings, dsn, symbols, book_source=source, oi_interval=60, stop_event=stop, health=health,
            handle_signals=False,
        )
    )  # fmt: skip

    def messages() -> int:
        # everything received on the wire: the connections ("streams[i]#n"), not the per-collector counts
        return sum(v.messages for k, v in health.streams.items() if "#" in k)

    await asyncio.sleep(warmup)
    m0, c0, t0 = messages(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    m1, c1, t1 = messages(), time.process_time(), time.monotonic()
    stop.set()
    report = await task
    agg = report.parts.get("aggtrades")
    wall, cpu, n = t1 - t0, c1 - c0, m1 - m0
    return {
        "messages": n,
        "msg_per_s": n / wall,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_share": cpu / wall,
        "cpu_per_1000_msg_s": (cpu / wall) / (n / wall / 1000) if n else float("nan"),
        "streams": {k: v.messages for k, v in health.streams.items()},
        "aggtrades": "yes" if agg is not None else "; ".join(report.notes) or "no",
        "errors": report.errors,
    }


def hot_path(n: int = 50_000) -> dict[str, float]:
    """Marginal cost without the network: JSON decode, checks, batch build, values, for n depth20 and
    n markPrice messages (a writer that discards the batches)."""
    import json
    import random

    from microstructure.ingest.collectors.book import BookReport, SnapshotSink, parse_depth_event
    from microstructure.ingest.collectors.market import MarketLive, MarketReport
    from microstructure.ingest.health import Health

    class Null:
        async def submit(self, kind, symbol, batch):  # type: ignore[no-untyped-def]
            pass

    rnd = random.Random(1)
    msgs = []
    for i in range(n):
        mid = 65000 + rnd.randint(-50, 50) * 0.1
        b = [[f"{mid - 0.05 - 0.1 * j:.2f}", f"{rnd.randint(1, 5000) / 1000:.3f}"] for j in range(20)]
        a = [[f"{mid + 0.05 + 0.1 * j:.2f}", f"{rnd.randint(1, 5000) / 1000:.3f}"] for j in range(20)]
        d = {"e": "depthUpdate", "E": 10 * i + 5, "T": 10 * i, "s": "BTCUSDT", "U": 8 * i + 1, "u": 8 * i + 8,
             "pu": 8 * i, "b": b, "a": a}  # fmt: skip
        msgs.append(json.dumps({"stream": "btcusdt@depth20@500ms", "data": d}))
    marks = [
        json.dumps({"stream": "btcusdt@markPrice@1s", "data": {"e": "markPriceUpdate", "E": 1000 * i, "s": "BTCUSDT",
                    "p": "65000.12345678", "i": "64990.1", "P": "64990.2", "r": "0.0001", "T": 28_800_000}})
        for i in range(n)
    ]  # fmt: skip

    async def run() -> tuple[float, float]:
        sink = SnapshotSink(Null(), "depth20", BookReport(["BTCUSDT"], "depth20"), Health(), None, "bench")
        c0 = time.process_time()
        for k, text in enumerate(msgs):
            obj = json.loads(text)
            sink.add("BTCUSDT", parse_depth_event(obj["data"], 0))
            if k % 1000 == 999:
                await sink.flush()
        await sink.flush()
        c1 = time.process_time()
        m = MarketLive(["BTCUSDT"], Null(), None, Health(), None, MarketReport(["BTCUSDT"]),  # type: ignore[arg-type]
                       oi_interval=60, funding_interval=3600)  # fmt: skip
        c2 = time.process_time()
        for k, text in enumerate(marks):
            obj = json.loads(text)
            m.on_message(obj["stream"], obj["data"], 0)
            if k % 1000 == 999:
                await m.flush()
        await m.flush()
        c3 = time.process_time()
        return c1 - c0, c3 - c2

    book_s, mark_s = asyncio.run(run())
    return {"n": n, "book_us": book_s / n * 1e6, "mark_us": mark_s / n * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=10)
    p.add_argument("--live-rate", type=float, default=300.0, help="aggregate trades per second per symbol")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--book-source", default="depth20", choices=("depth20", "diff"))
    p.add_argument("--hot-path", action="store_true", help="only the in-process hot path (no network)")
    args = p.parse_args()
    if args.hot_path:
        h = hot_path()
        for what, us in (("depth20 message", h["book_us"]), ("markPrice message", h["mark_us"])):
            print(f"{what}: {us:.1f} us CPU each = {us / 10:.1f} % of a core per 1,000 messages/s")
        return 0
    symbols = SYMBOLS[: args.symbols]
    extra = ["--history-days", "0", "--live-rate", str(args.live_rate)]
    with live_setup(symbols, *extra) as (settings, dsn):
        r = asyncio.run(measure(settings, dsn, symbols, args.book_source, args.warmup, args.seconds))
    print(f"aggregate trades collector: {r['aggtrades']}")
    print(
        f"symbols {len(symbols)}, book source {args.book_source}, live rate {args.live_rate:g}/s per symbol"
    )
    print(
        f"messages {r['messages']} in {r['wall_s']:.1f} s = {r['msg_per_s']:.0f}/s; per stream {r['streams']}"
    )
    print(f"process CPU {r['cpu_s']:.2f} s = {100 * r['cpu_share']:.1f} % of a core")
    print(f"CPU per 1,000 messages/s: {100 * r['cpu_per_1000_msg_s']:.1f} % of a core")
    if r["errors"]:
        print(f"errors: {r['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
