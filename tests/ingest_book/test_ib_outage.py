"""`collect all` as a process while the database is away: SIGTERM exits within seconds with every
batch spilled, `status` lists the spilled batches (the database down or up), and the next writer on
the folder stores them, after which `status` lists none ("the database" goes away through a TCP
proxy in front of the embedded server)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pyarrow.ipc as pa_ipc
import pytest
from ib_helpers import collect_cmd, exchange_config
from tcp_proxy import TcpProxy

from microstructure.cli import main
from microstructure.exchange.server import ExchangeThread
from microstructure.ingest.sink.spill_report import read_spill
from microstructure.ingest.sink.writer import Writer


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def latest_recv(dsn: str, table: str) -> float:
    with psycopg.connect(dsn) as conn:
        (t,) = conn.execute(f"SELECT extract(epoch FROM max(recv_ts)) FROM {table}").fetchone()  # type: ignore[misc]
    return float(t)


def status_out(dsn: str, home: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["--database-url", dsn, "--home", str(home), "status", "--days", "0"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sigterm_while_the_database_is_down_exits_within_15_s_with_everything_spilled(
    db_url: str, ib_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with TcpProxy(db_url) as proxy, ExchangeThread(exchange_config(ib_cache, clock_start=None)) as ex:
        cmd = collect_cmd(
            proxy.dsn, home, "all", "--symbol", "BTCUSDT", "--mode", "live", "--exchange-url", ex.base_url
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while count(db_url, "book_snapshots") < 3 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.2)
            proxy.set("down")
            time.sleep(6)  # rows keep arriving; the writer finds the database away
            term_at = time.time()
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert took < 15, (took, err[-3000:])
        assert proc.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert "batches left in spill files" in last, last
        stopped = next(x for x in out.splitlines() if "stopped by SIGTERM" in x)
        assert "flushed" not in stopped and "batches left in spill files" in stopped, (
            stopped
        )  # never "flushed"
        spilled = list((home / "spill").glob("*.arrow"))
        assert spilled and not list((home / "spill").glob("*.tmp"))

        # status with the database still down: the spilled batches, then the one error line
        rc, out, err = status_out(proxy.dsn, home, capsys)
        assert rc == 2 and err.startswith("microstructure: error: ") and len(err.strip().splitlines()) == 1
        assert f"spill files: {len(spilled)} batches waiting in {home / 'spill'}, NOT in the database" in out

    # status with the database back, before any collector started: the same batches, their tables
    spill = read_spill(home / "spill")
    assert len(spill.waiting) == len(spilled)
    rc, out, err = status_out(db_url, home, capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert (
        lines[0].startswith(f"spill files: {len(spilled)} batches waiting")
        and "replays them first" in lines[0]
    )
    tables = spill.by_table()
    assert {"book_snapshots", "mark_prices", "agg_trades"} <= set(tables)
    for table, (n, rows) in tables.items():
        assert f"{table} {n} batches ({rows:,} rows)" in lines[1]
    assert sum(n for n, _ in tables.values()) == len(spilled)
    assert lines[2].startswith("  time range of their rows: ") and lines[3].startswith("  oldest spilled at ")
    spilled_ids = set()
    for b in spill.waiting:
        if b.kind == "agg_trades":
            spilled_ids |= set(pa_ipc.open_file(str(b.path)).read_all().column("agg_id").to_pylist())
    assert spilled_ids

    async def replay() -> None:
        w = Writer(db_url, home / "spill")
        await w.start()
        assert await w.flush(60)
        await w.close()

    asyncio.run(replay())
    rc, out, err = status_out(db_url, home, capsys)
    assert rc == 0 and out.splitlines()[0] == f"spill files: none waiting in {home / 'spill'}", out
    with psycopg.connect(db_url) as conn:
        stored = {
            r[0]
            for r in conn.execute(
                "SELECT agg_id FROM agg_trades WHERE agg_id = ANY(%s)", (list(spilled_ids),)
            )
        }
    assert stored == spilled_ids
    # what arrived while the database was away, up to the SIGTERM, was on disk: nothing lost in memory
    for table in ("book_snapshots", "mark_prices", "agg_trades"):
        assert latest_recv(db_url, table) >= term_at - 2.5, table
