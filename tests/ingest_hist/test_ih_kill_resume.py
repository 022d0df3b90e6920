"""A historical run killed with SIGKILL mid-load and started again ends with the exact set of rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from ih_helpers import generator_trades, stored_rows

from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import ExchangeThread
from microstructure.ingest.collectors.trades_historical import day_start_ms

TARGET = Path(__file__).resolve().parent / "ih_kill_target.py"
COLUMNS = ["agg_id", "ts_ms", "price", "quantity", "first_trade_id", "last_trade_id", "is_buyer_maker"]


def cli(db_url: str, home: Path, base_url: str) -> list[str]:
    return [
        sys.executable,
        str(TARGET),
        "--database-url",
        db_url,
        "--home",
        str(home),
        "collect",
        "aggtrades",
        "--symbol",
        "BTCUSDT",
        "--start",
        "2022-08-09",
        "--end",
        "2022-08-12",
        "--exchange-url",
        base_url,
        "--no-progress",
    ]


def count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return int(conn.execute("SELECT count(*) FROM agg_trades").fetchone()[0])  # type: ignore[index]


def run_and_kill(cmd: list[str], db_url: str, kill_above: int, cwd: Path, timeout: float = 60) -> int:
    """Start the CLI, SIGKILL it once more than `kill_above` rows are stored; the count at the kill."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            n = count(db_url)
            if n > kill_above:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return n
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(
                    f"the run ended (rc {proc.returncode}) before it could be killed:\n{out}"
                )
            time.sleep(0.02)
        raise AssertionError("no rows arrived in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigkill_mid_load_then_rerun_ends_with_the_exact_rows(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    cfg = ExchangeConfig(
        history_days=3,
        trades_per_day=100_000,
        clock_start=datetime(2022, 8, 12, 12, 0, tzinfo=UTC),
        cache_dir=exchange_cache,
        faults=FaultConfig(rest_delay=0.03),  # slow answers, so that the kills land mid-load
    )
    thread = ExchangeThread(cfg)
    with thread as ex:
        home = tmp_path / "home"
        cmd = cli(db_url, home, ex.base_url)
        archived = len(
            thread.call(
                generator_trades,
                ex,
                "BTCUSDT",
                ex.origin_ms,
                day_start_ms(ex.history_dates()[-1]) + 86_400_000,
            )["agg_id"]
        )

        # 1: killed while the archives load; 2: killed while today's part comes page by page from REST
        first_kill = run_and_kill(cmd, db_url, 0, tmp_path)
        assert 0 < first_kill < archived
        second_kill = run_and_kill(cmd, db_url, archived + 5_000, tmp_path)
        assert second_kill > archived

        now_before = ex.now_ms()
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        now_after = ex.now_ms()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "gaps left 0" in done.stdout and "3 already complete" in done.stdout, done.stdout
        print(done.stdout)

        ref = thread.call(generator_trades, ex, "BTCUSDT", ex.origin_ms, now_after + 1)
        db = stored_rows(db_url, "BTCUSDT")
        n = len(db["agg_id"])
        assert len(set(db["agg_id"])) == n, "a row stored twice"
        first = ref["agg_id"][0]
        assert db["agg_id"] == list(range(first, first + n)), "an id missing"
        assert n >= sum(1 for t in ref["ts_ms"] if t <= now_before)
        for col in COLUMNS:
            assert db[col] == ref[col][:n], col
        with psycopg.connect(db_url) as conn:
            cov = conn.execute(
                "SELECT sum(row_count), sum(missing_count), min(first_id), max(last_id) FROM agg_trade_coverage "
                "WHERE symbol = 'BTCUSDT'"
            ).fetchone()
        assert cov == (n, 0, first, first + n - 1)
