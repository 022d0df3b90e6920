"""The writer while the database is away, frozen or the spill folder full: batches reach disk within
seconds (a SIGKILL then loses at most that window), a full spill filesystem drops only the oldest
batches in memory and records exactly which, and everything before them is kept. "The database"
goes away through a TCP proxy in front of the embedded server; the full filesystem is a small tmpfs
(or, where mounting is not allowed, the spill size limit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from tcp_proxy import TcpProxy

from microstructure.ingest.records import AGG_TRADES
from microstructure.ingest.sink.spill_report import read_spill
from microstructure.ingest.sink.writer import Writer

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC


def trades(lo: int, n: int) -> pa.Table:
    ids = np.arange(lo, lo + n, dtype=np.int64)
    return pa.table(
        {
            "agg_id": ids,
            "ts_ms": T0 + ids * 10,
            "price": 100.0 + ids * 0.5,
            "quantity": ids * 0.001 + 0.001,
            "first_trade_id": ids * 3,
            "last_trade_id": ids * 3 + 2,
            "is_buyer_maker": ids % 2 == 0,
            "recv_ms": T0 + ids * 10 + 5,
        },
        schema=AGG_TRADES,
    )


def stored_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT agg_id FROM agg_trades ORDER BY agg_id").fetchall()]


@pytest.fixture
def proxy(db_url: str) -> Iterator[TcpProxy]:
    with TcpProxy(db_url) as p:
        yield p


async def wait_for(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return bool(cond())


async def abandon(w: Writer) -> None:
    """Stop a writer's tasks without closing it (what a SIGKILL leaves: only its files)."""
    for t in (w._task, w._watch_task):
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    if w._conn is not None:
        w._conn.terminate()


def test_batches_reach_disk_within_seconds_of_the_database_going_away(
    db_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """Not only when memory is full: after `spill_after` seconds of failing writes the batch being
    written and every queued one are on disk, so a kill then loses nothing; the next writer on the
    folder replays them."""

    async def go() -> tuple[int, float]:
        w = Writer(proxy.dsn, tmp_path / "spill", spill_after=1.0, max_backoff=0.3)
        await w.start()
        w.submit_nowait("agg_trades", "BTCUSDT", trades(0, 100))
        assert await w.flush(10)
        proxy.set("down")
        t0 = time.monotonic()
        for k in range(1, 4):
            w.submit_nowait("agg_trades", "BTCUSDT", trades(100 * k, 100))
        assert await wait_for(lambda: w.spill_files == 3, 15), w.spill_files
        took = time.monotonic() - t0
        assert w.down
        await abandon(w)  # "SIGKILL"
        files = len(list((tmp_path / "spill").glob("*.arrow")))
        # what `status` reads from the folder: the three batches, their rows and their time range
        spill = read_spill(tmp_path / "spill")
        assert spill.by_table() == {"agg_trades": (3, 300)} and not spill.rejected and not spill.unreadable
        assert (min(b.first_ms for b in spill.waiting), max(b.last_ms for b in spill.waiting)) == (
            T0 + 100 * 10,
            T0 + 399 * 10,
        )
        assert {b.symbol for b in spill.waiting} == {"BTCUSDT"}
        proxy.set("up")
        w2 = Writer(db_url, tmp_path / "spill")
        await w2.start()
        assert await w2.flush(20)
        await w2.close()
        assert read_spill(tmp_path / "spill").waiting == []
        return files, took

    files, took = asyncio.run(go())
    assert files == 3 and took < 10
    assert stored_ids(db_url) == list(range(400))
    assert not list((tmp_path / "spill").glob("*.arrow*"))


def test_a_frozen_database_is_taken_as_away_and_the_batch_in_flight_is_backed_by_a_file(
    db_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    async def go() -> tuple[int, int, bool]:
        w = Writer(proxy.dsn, tmp_path / "spill", hung_after=1.5, spill_after=1.0)
        await w.start()
        w.submit_nowait("agg_trades", "ETHUSDT", trades(0, 50))
        assert await w.flush(10)
        proxy.set("frozen")
        w.submit_nowait("agg_trades", "ETHUSDT", trades(50, 50))
        assert await wait_for(lambda: w.spill_files == 1, 10)
        on_disk, down = w.spill_files, w.down
        proxy.set("up")
        assert await w.flush(70)
        left = w.spill_files
        await w.close()
        return on_disk, left, down

    on_disk, left, down = asyncio.run(go())
    assert on_disk == 1 and down and left == 0
    assert stored_ids(db_url) == list(range(100))


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int) -> Iterator[int | None]:
    """A tmpfs of `size_kb` at `path`; yields None when mounted, else the size limit to use instead."""
    path.mkdir(parents=True)
    mounted = False
    if os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True
            ).returncode
            == 0
        )
    try:
        yield None if mounted else size_kb * 1024
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_spill_filesystem_keeps_the_newest_in_memory_and_records_exactly_what_was_dropped(
    db_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    """The database is away and the spill filesystem fills up: the writer (and so the collector)
    goes on, keeps the newest batches in memory within the queue's bounds and drops the oldest of
    them, counted and logged; once the database answers, what was spilled before the disk filled
    and what memory kept are written, and each dropped batch is an ingest_events row with its table,
    symbol, rows and time range. A .tmp left by a failed spill is never taken for a batch."""
    spill = tmp_path / "spillfs"
    n_batches, rows = 40, 400

    async def go(limit: int | None) -> Writer:
        w = Writer(
            proxy.dsn, spill, spill_after=0.5, max_backoff=0.3, max_queue_batches=5, max_spill_bytes=limit
        )
        await w.start()
        proxy.set("down")
        for k in range(n_batches):
            w.submit_nowait("agg_trades", "BTCUSDT", trades(k * rows, rows))
            await asyncio.sleep(0.1)
        assert w.spill_full and w.stats.batches_dropped > 0
        assert len(w._queue) <= 5
        assert not list(spill.glob("*.tmp"))
        spilled = w.spill_files
        assert spilled >= 1
        proxy.set("up")
        assert await w.flush(60)
        await w.close()
        return w

    with small_filesystem(spill, 256) as limit:
        w = asyncio.run(go(limit))
    dropped = w.stats.batches_dropped
    ids = set(stored_ids(db_url))
    kept = [k for k in range(n_batches) if k * rows in ids]
    lost = [k for k in range(n_batches) if k * rows not in ids]
    assert len(lost) == dropped and w.stats.rows_dropped == dropped * rows
    # whole batches only, and nothing before the first drop is lost: the spilled ones came back
    assert ids == {i for k in kept for i in range(k * rows, (k + 1) * rows)}
    assert kept[0] == 0 and lost[0] > 0 and max(kept) == n_batches - 1
    with psycopg.connect(db_url) as conn:
        events = [
            r[0] if isinstance(r[0], dict) else json.loads(r[0])
            for r in conn.execute(
                "SELECT detail FROM ingest_events WHERE kind = 'dropped' ORDER BY id"
            ).fetchall()
        ]
    assert len(events) == dropped
    for e, k in zip(events, lost, strict=True):
        assert e["table"] == "agg_trades" and e["symbol"] == "BTCUSDT" and e["rows"] == rows
        assert (e["from_ms"], e["to_ms"]) == (T0 + k * rows * 10, T0 + ((k + 1) * rows - 1) * 10)
