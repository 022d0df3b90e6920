"""Shared pieces of the benchmarks: a scratch database and the local exchange in its own process.

The exchange runs as a separate process (`python -m microstructure.exchange serve`) and the embedded
PostgreSQL in its own processes, so a benchmark's CPU figures (time.process_time) are the collector's
alone. Without MICROSTRUCTURE_DATABASE_URL, an embedded server is started in the temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path


def database(tmp: Path) -> tuple[str, object | None]:
    """A new, migrated database: (its DSN, the embedded server to stop or None)."""
    import psycopg

    from microstructure.db import migrate

    url = os.environ.get("MICROSTRUCTURE_DATABASE_URL")
    server = None
    if not url:
        from microstructure.db.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(tmp / "pg")
        admin = server.ensure_running().dsn("postgres")
    else:
        admin = url
    name = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin.rsplit("/", 1)[0] + "/" + name
    migrate.upgrade(dsn)
    return dsn, server


def drop_database(dsn: str) -> None:
    """Drop the database `dsn` names (its disk freed at once), from the same server's postgres."""
    import psycopg

    with psycopg.connect(dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')


def stop_database(server: object | None) -> None:
    if server is not None:
        with contextlib.suppress(Exception):
            server.stop()  # type: ignore[attr-defined]


@contextlib.contextmanager
def exchange_process(symbols: list[str], cache_dir: Path, *extra: str) -> Iterator[str]:
    """Run the local exchange in its own process; yields its base URL (REST, websocket, archives)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "microstructure.exchange", "serve", "--port", "0", "--symbols", ",".join(symbols),
         "--cache-dir", str(cache_dir), *extra],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base = next((w for w in line.split() if w.startswith("http")), None)
        if base is None:
            raise RuntimeError(f"the local exchange did not start: {line!r}")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def live_setup(symbols: list[str], *exchange_args: str) -> Iterator[tuple[object, str]]:
    """A temporary folder, the local exchange (own process), a fresh database and Settings pointing
    at both; yields (settings, dsn)."""
    from microstructure.config import Settings

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with exchange_process(symbols, tmp / "cache", *exchange_args) as base:
            server = None
            try:
                dsn, server = database(tmp)
                settings = Settings(database_url=dsn, home=tmp / "home")
                settings.point_at_exchange(base)
                yield settings, dsn
            finally:
                stop_database(server)


def quantile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(np.asarray(values), q)) if values else float("nan")


def add_archive_args(p: argparse.ArgumentParser, days: int) -> None:
    """The options of a bench that loads the local exchange's aggTrades archives."""
    p.add_argument("--days", type=int, default=days)
    p.add_argument("--trades-per-day", type=int, default=2_500_000)
    p.add_argument("--symbol", default="BTCUSDT")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=Path(".microstructure/exchange-cache"))


def fetch_daily_archive(base: str, symbol: str, day: date | str, *, timeout: float = 1800) -> bytes:
    """One daily aggTrades archive from the local exchange at `base` (the first fetch of a day makes
    the exchange generate and cache it)."""
    import urllib.request

    from microstructure.ingest.binance.archives import archive_url

    with urllib.request.urlopen(
        archive_url(base, "aggTrades", symbol, "daily", day), timeout=timeout
    ) as resp:
        return resp.read()


def warm_archives(base: str, symbol: str, days: list[date]) -> None:
    """Fetch each day's archive once, before timing: the exchange generates and caches it (its cost,
    not the collector's)."""
    import time

    t0 = time.perf_counter()
    for d in days:
        fetch_daily_archive(base, symbol, d)
    print(f"archives ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def archive_exchange(args: argparse.Namespace) -> Iterator[tuple[str, list[date]]]:
    """The local exchange (its own process) serving `args.days` complete days of aggTrades archives
    up to yesterday, its clock just after today's midnight: (its base URL, the days)."""
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=args.days - k) for k in range(args.days)]
    extra = ["--history-days", str(args.days), "--trades-per-day", str(args.trades_per_day),
             "--seed", str(args.seed), "--clock-start", f"{today.isoformat()}T00:00:05"]  # fmt: skip
    with exchange_process([args.symbol], args.cache_dir.resolve(), *extra) as base:
        yield base, days
