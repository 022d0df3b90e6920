"""Local exchange benchmark: archive generation speed and websocket message rate.

    python bench/bench_exchange.py [--trades-per-day 2500000] [--live-rate 3000] [--seconds 10]

1. Generates one BTCUSDT-like day (about 2.5 million aggregate trades) from scratch and builds its
   aggTrades archive (CSV + zip + CHECKSUM): rows per second of the generator and of the whole path.
2. Starts `python -m microstructure.exchange serve` in a subprocess with a live trade rate per
   symbol for two symbols, reads one combined aggTrade stream with the `websockets` client and
   reports messages per second received and whether any aggregate id went missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import exchange_process

from microstructure.exchange.archives import ArchiveRef, build_csv, checksum_text, zip_bytes
from microstructure.exchange.config import DAY_MS, symbol_spec
from microstructure.exchange.market import SymbolMarket


def bench_archive(trades_per_day: int) -> dict[str, float]:
    day0 = 19_800 * DAY_MS
    market = SymbolMarket(symbol_spec("BTCUSDT"), 1, trades_per_day, day0, day0 + 2 * DAY_MS)
    t0 = time.perf_counter()
    market.ensure(day0)
    t_gen = time.perf_counter() - t0
    rows = market.segments[0].n
    ref = ArchiveRef("daily", "aggTrades", "BTCUSDT", time.strftime("%Y-%m-%d", time.gmtime(day0 / 1000)))
    t1 = time.perf_counter()
    csv = build_csv(market, ref)
    t_csv = time.perf_counter() - t1
    t2 = time.perf_counter()
    data = zip_bytes(csv, ref.filename.removesuffix(".zip") + ".csv", _date(day0))
    checksum_text(data, ref.filename)
    t_zip = time.perf_counter() - t2
    total = t_gen + t_csv + t_zip
    return {
        "rows": rows,
        "generate_s": t_gen,
        "csv_s": t_csv,
        "zip_s": t_zip,
        "total_s": total,
        "rows_per_s": rows / total,
        "generate_rows_per_s": rows / t_gen,
        "csv_mb": len(csv) / 1e6,
        "zip_mb": len(data) / 1e6,
    }


def _date(t_ms: int):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).date()


async def _read_stream(ws_url: str, seconds: float) -> dict[str, float]:
    from websockets.asyncio.client import connect

    url = ws_url + "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
    last: dict[str, int] = {}
    gaps = 0
    n = 0
    lag_ms = 0
    async with connect(url, max_queue=None) as ws:
        # warm up for a second, then count
        t_end_warm = time.monotonic() + 1.0
        while time.monotonic() < t_end_warm:
            await ws.recv()
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            msg = json.loads(await ws.recv())
            d = msg["data"]
            prev = last.get(d["s"])
            if prev is not None and d["a"] != prev + 1:
                gaps += d["a"] - prev - 1
            last[d["s"]] = d["a"]
            lag_ms = max(lag_ms, d["E"] - d["T"])
            n += 1
    return {
        "messages": n,
        "seconds": elapsed,
        "msgs_per_s": n / elapsed,
        "missing_ids": gaps,
        "max_E_minus_T_ms": lag_ms,
    }


def bench_websocket(live_rate: float, seconds: float) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        exchange_process(
            ["BTCUSDT", "ETHUSDT"], Path(tmp) / "cache", "--history-days", "0", "--live-rate", str(live_rate)
        ) as base,
    ):
        return asyncio.run(_read_stream("ws" + base.removeprefix("http"), seconds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trades-per-day", type=int, default=2_500_000)
    p.add_argument("--live-rate", type=float, default=3000.0, help="aggregate trades per second per symbol")
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    a = bench_archive(args.trades_per_day)
    print(
        f"archive: {a['rows']:,} aggTrades rows in {a['total_s']:.2f} s = {a['rows_per_s']:,.0f} rows/s "
        f"(generate {a['generate_s']:.2f} s = {a['generate_rows_per_s']:,.0f} rows/s, CSV {a['csv_s']:.2f} s, "
        f"zip {a['zip_s']:.2f} s; CSV {a['csv_mb']:.0f} MB, zip {a['zip_mb']:.0f} MB)"
    )
    w = bench_websocket(args.live_rate, args.seconds)
    print(
        f"websocket: {w['messages']:,} aggTrade messages in {w['seconds']:.1f} s = {w['msgs_per_s']:,.0f} msg/s "
        f"(2 symbols x {args.live_rate:g}/s offered, one combined connection), missing ids {w['missing_ids']}, "
        f"max E-T {w['max_E_minus_T_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
