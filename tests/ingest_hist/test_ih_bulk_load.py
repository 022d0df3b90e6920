"""The bulk-load path for whole days (sink/bulk.py) on the embedded PostgreSQL: a fresh day table
filled by COPY FREEZE, indexed side by side and attached; idempotent, killable at any step, and no
wait for a live writer of today's partition meanwhile."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from ih_helpers import DAY_MS, day_ms, run_collect, stored_rows, trades
from test_ih_historical import D9, D10, D11, exchange, settings_for

from microstructure.exchange.server import LocalExchange
from microstructure.ingest.sink import bulk
from microstructure.ingest.sink.writer import write_batch


def load_tables(db_url: str) -> list[str]:
    """What waits (or was left) in microstructure_load."""
    with psycopg.connect(db_url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'microstructure_load'::regnamespace "
                "AND relkind = 'r' ORDER BY 1"
            )
        ]


def partitions(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'agg_trades'::regclass ORDER BY 1"
            )
        ]


async def hold_symbol_lock(db_url: str) -> tuple[asyncpg.Connection, Any]:
    """Another session holding BTCUSDT's lock in an open transaction: a bulk day's attach (and any
    writer of the symbol) waits for it. Roll the transaction back to let them on."""
    holder = await asyncpg.connect(db_url)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock(hashtext('agg_trades:BTCUSDT'))")
    return holder, tx


def test_a_fresh_day_is_bulk_loaded_and_a_loaded_day_is_merged_not_doubled(db_url: str) -> None:
    d = date(2026, 11, 20)
    batch = trades(1_000, 50_000, day_ms(d), DAY_MS)

    async def main() -> None:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
        try:
            assert await bulk.load_day(pool, "BTCUSDT", d, batch) == 50_000
            conn = await pool.acquire()
            # the day exists now: the bulk path steps aside, and the writer's merge adds nothing
            assert await bulk.load_day(pool, "BTCUSDT", d, batch) is None
            assert await write_batch(conn, "agg_trades", "BTCUSDT", batch) == 0
            # rows outside the day are not for the bulk path
            assert await bulk.load_day(pool, "BTCUSDT", d + timedelta(days=1), batch) is None
            # a day loaded in pieces: the first piece makes the partition, the rest merge into it
            d2 = d + timedelta(days=1)
            b2 = trades(51_000, 1_000, day_ms(d2), DAY_MS)
            assert await bulk.load_day(pool, "BTCUSDT", d2, b2.slice(0, 600)) == 600
            assert await write_batch(conn, "agg_trades", "BTCUSDT", b2) == 400
            cov = await conn.fetch(
                "SELECT day, first_id, last_id, row_count, missing_count FROM agg_trade_coverage ORDER BY day"
            )
            assert [tuple(r) for r in cov] == [(d, 1_000, 50_999, 50_000, 0), (d2, 51_000, 51_999, 1_000, 0)]
            assert await conn.fetchval("SELECT count(*) FROM agg_trade_gaps") == 0
            logged = await conn.fetchval(
                "SELECT count(*) FROM raw_invalidations WHERE table_name = 'agg_trades'"
            )
            assert logged >= 2
            # no day's lock is left held: a writer makes the next day's partition at once
            assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
            await pool.release(conn)
        finally:
            await pool.close()

    asyncio.run(main())
    assert partitions(db_url) == ["agg_trades_p20261120", "agg_trades_p20261121"]
    db = stored_rows(db_url, "BTCUSDT")
    assert db["agg_id"] == list(range(1_000, 52_000))
    assert db["price"][:50_000] == batch.column("price").to_pylist()
    with psycopg.connect(db_url) as conn:
        # loaded frozen (COPY FREEZE): the pages are all-visible and all-frozen at once, no vacuum needed
        # (but for the last bulk-extended run of pages, which PostgreSQL leaves to the next vacuum)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        pages, visible, frozen = conn.execute(
            "SELECT pg_relation_size('agg_trades_p20261120') / current_setting('block_size')::int, "
            "all_visible, all_frozen FROM pg_visibility_map_summary('agg_trades_p20261120')"
        ).fetchone()
        assert pages > 100 and visible == frozen >= 0.85 * pages
        kinds = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'agg_trades_p20261120'::regclass AND contype IN ('c', 'p') ORDER BY 1"
        ).fetchall()
        assert kinds == [("agg_trades_p20261120_day",), ("agg_trades_p20261120_pkey",)]
        # the partition's indexes carry the names a partition made by the writer gets
        idx = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'agg_trades_p20261120' ORDER BY 1"
        ).fetchall()
        assert idx == [("agg_trades_p20261120_pkey",), ("agg_trades_p20261120_symbol_ts_idx",)]
        assert conn.execute("SELECT relnamespace::regnamespace::text FROM pg_class "
                            "WHERE oid = 'agg_trades_p20261120'::regclass").fetchone() == ("public",)  # fmt: skip
        # the symbol the COPY did not send came from a default the attached partition no longer has
        default = conn.execute(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_name = 'agg_trades_p20261120' AND column_name = 'symbol'"
        ).fetchone()
        assert default == (None,)
    assert load_tables(db_url) == []


def test_a_bulk_day_is_attached_with_its_statistics(db_url: str) -> None:
    """The day's table is analyzed before it is attached: the feature refresh that follows a load
    plans the day's per-second trade stage from real row counts (a hash aggregate for a real day),
    not from a guess of a few dozen rows (a sort of the whole day spilled to disk)."""
    from microstructure.features_sql.refresher import _insert_sql
    from microstructure.features_sql.stages import STAGE_BY_NAME

    d = date(2026, 11, 20)

    async def main() -> None:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
        try:
            assert (
                await bulk.load_day(pool, "BTCUSDT", d, trades(1_000, 200_000, day_ms(d), DAY_MS)) == 200_000
            )
        finally:
            await pool.close()

    asyncio.run(main())
    lo = datetime(d.year, d.month, d.day, tzinfo=UTC)
    stage = _insert_sql(STAGE_BY_NAME["trades_1s"]).split("\n", 1)[1]  # the SELECT its INSERT runs
    stage = stage.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s")
    with psycopg.connect(db_url) as conn:
        analyzed = conn.execute(
            "SELECT last_analyze IS NOT NULL, (SELECT count(*) FROM pg_stats WHERE tablename = relname) "
            "FROM pg_stat_user_tables WHERE relname = 'agg_trades_p20261120'"
        ).fetchone()
        day = (["BTCUSDT"], lo, lo + timedelta(days=1))
        (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + stage, day).fetchone()  # type: ignore[misc]
    assert analyzed is not None and analyzed[0] and analyzed[1] >= 5, analyzed

    def estimates(node: dict[str, Any]) -> list[float]:
        return [node["Plan Rows"], *(r for sub in node.get("Plans", []) for r in estimates(sub))]

    # the scan of the day estimated at its size (without statistics: about 60 rows of 200,000)
    assert max(estimates(plan[0]["Plan"])) > 100_000, plan


def test_on_the_embedded_server_a_bulk_day_skips_the_wal_a_merged_day_writes(db_url: str) -> None:
    """wal_level = minimal (embedded.py): a day's load table and its indexes, new in their
    transactions, are fsynced at commit, not written to the WAL too; rows merged into an existing
    partition are WAL-logged as on any server."""
    bulk_day, merged_day = date(2026, 11, 20), date(2026, 11, 21)

    async def main() -> tuple[int, int]:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
        try:
            async with pool.acquire() as conn:
                lsn = "SELECT pg_current_wal_lsn()"
                start = await conn.fetchval(lsn)
                rows = trades(1, 300_000, day_ms(bulk_day), DAY_MS)
                assert await bulk.load_day(pool, "BTCUSDT", bulk_day, rows) == 300_000
                mid = await conn.fetchval(lsn)
                batch = trades(300_001, 300_000, day_ms(merged_day), DAY_MS)
                assert await write_batch(conn, "agg_trades", "BTCUSDT", batch) == 300_000
                end = await conn.fetchval(lsn)
                diff = "SELECT pg_wal_lsn_diff($1, $2)::bigint"
                return await conn.fetchval(diff, mid, start), await conn.fetchval(diff, end, mid)
        finally:
            await pool.close()

    bulk_wal, merged_wal = asyncio.run(main())
    with psycopg.connect(db_url) as conn:
        size = {
            d: conn.execute(
                "SELECT pg_total_relation_size(%s::regclass)", (f"agg_trades_p{d:%Y%m%d}",)
            ).fetchone()[0]
            for d in (bulk_day, merged_day)
        }
        wal_level = conn.execute("SHOW wal_level").fetchone()
    assert size[bulk_day] > 20_000_000 and size[merged_day] > 20_000_000  # both days stored in full
    assert bulk_wal < 0.02 * size[bulk_day], (bulk_wal, size)  # coverage and the catalog only
    assert merged_wal > 0.5 * size[merged_day], (merged_wal, size)  # heap and index pages logged
    assert wal_level == ("minimal",)


@pytest.mark.parametrize("step", ["COPY", "CREATE"])
def test_a_killed_bulk_load_leaves_no_half_attached_day_and_runs_again(db_url: str, step: str) -> None:
    """The backend filling the day's table (COPY) or one building an index (CREATE) is killed: nothing
    of the day is stored or left behind, and the same load runs again."""
    d = date(2026, 11, 22)
    batch = trades(1, 1_500_000, day_ms(d), DAY_MS)

    async def main() -> None:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
        watcher = await asyncpg.connect(db_url)
        task = asyncio.create_task(bulk.load_day(pool, "BTCUSDT", d, batch))
        pid = None
        for _ in range(4000):  # kill it while it fills or indexes the day's table
            pid = await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 LIMIT 1",
                f"{step}%microstructure_load%",
            )
            if pid:
                break
            await asyncio.sleep(0.005)
        assert pid, f"the load never reached {step}"
        assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises((asyncpg.exceptions.PostgresError, asyncpg.exceptions.InterfaceError, OSError)):
            await task
        assert await watcher.fetchval("SELECT count(*) FROM agg_trades") == 0
        assert await watcher.fetchval("SELECT count(*) FROM agg_trade_coverage") == 0
        assert await watcher.fetchval("SELECT to_regclass('agg_trades_p20261122')") is None
        assert await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        await watcher.close()
        assert load_tables(db_url) == []
        try:
            assert await bulk.load_day(pool, "BTCUSDT", d, batch) == 1_500_000
            async with pool.acquire() as again:
                assert await again.fetchval("SELECT count(DISTINCT agg_id) FROM agg_trades") == 1_500_000
        finally:
            await pool.close()

    asyncio.run(main())
    assert partitions(db_url) == ["agg_trades_p20261122"]
    assert load_tables(db_url) == []


def test_a_table_a_dead_loader_left_unattached_is_dropped_by_the_next_load(db_url: str) -> None:
    """A loader process that died between committing the day's table and attaching it (no chance to
    clean up) leaves the table in microstructure_load, unseen by agg_trades; loading the day again
    replaces it."""
    d = date(2026, 11, 23)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT microstructure_new_load_table('agg_trades', %s, 'BTCUSDT')", (d,))
        conn.execute(
            "INSERT INTO microstructure_load.agg_trades_p20261123 VALUES "
            "('ETHUSDT', 1, '2026-11-23 00:00:01+00', 1, 1, 1, 1, false, NULL)"
        )
    assert load_tables(db_url) == ["agg_trades_p20261123"]
    assert stored_rows(db_url, "ETHUSDT")["agg_id"] == []
    batch = trades(5, 1_000, day_ms(d), DAY_MS)

    async def main() -> None:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
        phases: dict[str, float] = {}
        try:
            assert await bulk.load_day(pool, "BTCUSDT", d, batch, phases=phases) == 1_000
        finally:
            await pool.close()
        keyed, timed = "build btree (symbol, agg_id, ts)", "build btree (symbol, ts)"
        assert set(phases) == {"copy", keyed, timed, "builds", "analyze", "attach"}
        assert min(phases.values()) > 0 and phases["builds"] >= max(phases[keyed], phases[timed])

    asyncio.run(main())
    assert load_tables(db_url) == []
    assert stored_rows(db_url, "BTCUSDT")["agg_id"] == list(range(5, 1_005))
    assert stored_rows(db_url, "ETHUSDT")["agg_id"] == []


def test_a_historical_run_drops_the_tables_of_dead_loaders_and_keeps_a_live_ones(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """Tables a killed loader left for days the run does not load are dropped when a historical run
    starts (their disk comes back); the table of a loader still at work (it holds its day's lock, in
    another session) is kept, and so is a run with bulk loading off."""
    dead, busy = date(2026, 11, 24), date(2026, 11, 25)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for d in (dead, busy):
            conn.execute("SELECT microstructure_new_load_table('agg_trades', %s, 'BTCUSDT')", (d,))
    assert load_tables(db_url) == ["agg_trades_p20261124", "agg_trades_p20261125"]
    holder = psycopg.connect(db_url, autocommit=True)  # a loader at work on the busy day
    holder.execute(
        "SELECT pg_advisory_lock(hashtext('microstructure_partition:' || microstructure_day_partition_name('agg_trades', %s)))",
        (busy,),
    )

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            plain = await run_collect(settings, db_url, ["BTCUSDT"], D9, D9, bulk_load=False)
            assert plain.ok and load_tables(db_url) == ["agg_trades_p20261124", "agg_trades_p20261125"]
            report = await run_collect(settings, db_url, ["BTCUSDT"], D10, D10)
            assert report.ok and report.symbols["BTCUSDT"].rows_bulk > 0

    try:
        asyncio.run(main())
        assert load_tables(db_url) == ["agg_trades_p20261125"]
    finally:
        holder.close()  # the loader is gone: the next sweep takes its table too

    async def sweep() -> list[str]:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        try:
            return await bulk.drop_stale_load_tables(pool)
        finally:
            await pool.close()

    assert asyncio.run(sweep()) == ["agg_trades_p20261125"]
    assert load_tables(db_url) == []
    assert asyncio.run(sweep()) == []


LOADER = f"""
import asyncio, sys
from datetime import date
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import asyncpg
from ih_helpers import DAY_MS, day_ms, trades
from microstructure.ingest.sink import bulk

async def main(url, days):
    pool = await asyncpg.create_pool(url, min_size=1, max_size=3)
    first = 1
    for d in map(date.fromisoformat, days):
        print(await bulk.load_day(pool, "BTCUSDT", d, trades(first, 600_000, day_ms(d), DAY_MS)), flush=True)
        first += 600_000
    await pool.close()

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def test_live_writes_into_today_wait_for_no_attach_of_older_days(db_url: str) -> None:
    """A live writer commits a batch every 20 ms into today's partition while three older days of
    600,000 rows each are bulk-loaded and attached: every live row is stored, no live write waits."""
    today = date(2026, 12, 2)
    old_days = [today - timedelta(days=k) for k in (5, 4, 3)]

    async def main() -> tuple[list[float], int, float]:
        live = await asyncpg.connect(db_url)
        probe = await asyncpg.connect(db_url)
        done = asyncio.Event()
        latencies: list[float] = []
        sent = 0
        worst_wait = 0.0

        async def live_loop() -> None:
            nonlocal sent
            next_id = 10_000_000
            t = day_ms(today)
            while not done.is_set():
                b = trades(next_id, 200, t, 1_000, seed=next_id)
                t0 = time.monotonic()
                await write_batch(live, "agg_trades", "BTCUSDT", b)
                latencies.append(time.monotonic() - t0)
                next_id += 200
                sent += 200
                t += 1_000
                await asyncio.sleep(0.02)

        async def lock_probe() -> None:
            nonlocal worst_wait
            pid = live.get_server_pid()
            while not done.is_set():
                waited = await probe.fetchval(
                    "SELECT extract(epoch FROM now() - state_change) FROM pg_stat_activity "
                    "WHERE pid = $1 AND wait_event_type = 'Lock'",
                    pid,
                )
                worst_wait = max(worst_wait, float(waited or 0.0))
                await asyncio.sleep(0.01)

        runners = [asyncio.create_task(live_loop()), asyncio.create_task(lock_probe())]
        await asyncio.sleep(0.3)
        # the loader in a process of its own: its encoding must not stall this event loop
        loader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOADER, db_url, *(d.isoformat() for d in old_days),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await loader.communicate()
        assert loader.returncode == 0 and out.decode().split() == ["600000"] * 3
        await asyncio.sleep(0.3)
        done.set()
        await asyncio.gather(*runners)
        for c in (live, probe):
            await c.close()
        return latencies, sent, worst_wait

    latencies, sent, worst_wait = asyncio.run(main())
    assert len(latencies) > 20
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert worst_wait < 1.0
    with psycopg.connect(db_url) as conn:
        live_rows = conn.execute(
            "SELECT count(*) FROM agg_trades WHERE ts >= %s", (datetime(2026, 12, 2, tzinfo=UTC),)
        ).fetchone()[0]
        assert live_rows == sent
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone() == (sent + 1_800_000,)
    assert partitions(db_url) == [f"agg_trades_p{d:%Y%m%d}" for d in old_days] + ["agg_trades_p20261202"]


def test_the_collector_bulk_loads_archive_days_and_a_rerun_stores_nothing_twice(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            report = await run_collect(settings, db_url, ["BTCUSDT"], D9, D11)
            rep = report.symbols["BTCUSDT"]
            assert rep.days_archive == [D9, D10, D11] and report.ok
            assert rep.rows_bulk == rep.rows_archive == rep.rows > 50_000
            first = stored_rows(db_url, "BTCUSDT")["agg_id"]
            assert first == list(range(first[0], first[0] + len(first)))
            # forget that the days are complete: the archives come again, the partitions exist, so
            # they go through the idempotent merge and store nothing
            with psycopg.connect(db_url) as conn:
                conn.execute("DELETE FROM agg_trade_coverage")
                conn.execute("DELETE FROM ingest_checkpoints")
            again = await run_collect(settings, db_url, ["BTCUSDT"], D9, D11)
            r2 = again.symbols["BTCUSDT"]
            assert r2.days_archive == [D9, D10, D11] and r2.rows_bulk == 0 and again.ok
            assert stored_rows(db_url, "BTCUSDT")["agg_id"] == first
            assert r2.rows == len(first)  # every row sent again, none stored twice
            # the same range through today's path only (no bulk): nothing changes either
            plain = await run_collect(settings, db_url, ["BTCUSDT"], D9, D11, bulk_load=False)
            assert plain.ok and plain.symbols["BTCUSDT"].rows_bulk == 0
            assert stored_rows(db_url, "BTCUSDT")["agg_id"] == first

    asyncio.run(main())
    assert partitions(db_url) == ["agg_trades_p20220809", "agg_trades_p20220810", "agg_trades_p20220811"]


def test_the_next_day_is_copied_while_a_day_attaches_and_a_cancel_there_leaves_nothing_taken(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """The collector copies a day in while the day before builds its indexes and attaches (its
    attach held here by another session holding the symbol's lock): both days' tables wait in
    microstructure_load, no checkpoint is written ahead of them; cancelling the run then gives back
    every lock and connection, drops both tables, and the same command loads all three days."""

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            watcher = await asyncpg.connect(db_url)
            holder, tx = await hold_symbol_lock(db_url)
            task = asyncio.create_task(run_collect(settings, db_url, ["BTCUSDT"], D9, D11))
            waiting = ["agg_trades_p20220809", "agg_trades_p20220810"]
            for _ in range(3000):
                if load_tables(db_url) == waiting or task.done():
                    break
                await asyncio.sleep(0.01)
            assert load_tables(db_url) == waiting  # D10 copied in while D9 waits to attach
            blocked = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%agg_trades:%'"
            )
            assert blocked == 1
            assert await watcher.fetchval("SELECT count(*) FROM ingest_checkpoints") == 0
            assert partitions(db_url) == []
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)  # returns: no connection was left taken
            others = "pid NOT IN (pg_backend_pid(), $1)"
            locks = await watcher.fetchval(
                f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND {others}",
                holder.get_server_pid(),
            )
            sessions = await watcher.fetchval(
                f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {others} "
                "AND backend_type = 'client backend'",
                holder.get_server_pid(),
            )
            assert (locks, sessions) == (0, 0)
            assert load_tables(db_url) == [] and partitions(db_url) == []
            await tx.rollback()
            await holder.close()
            await watcher.close()
            report = await run_collect(settings, db_url, ["BTCUSDT"], D9, D11)
            rep = report.symbols["BTCUSDT"]
            assert report.ok and rep.days_archive == [D9, D10, D11] and rep.rows_bulk == rep.rows
            ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
            assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) == rep.rows

    asyncio.run(main())
    assert partitions(db_url) == ["agg_trades_p20220809", "agg_trades_p20220810", "agg_trades_p20220811"]
    assert load_tables(db_url) == []


def test_a_bulk_day_whose_session_is_killed_at_its_attach_goes_through_the_writer(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """The session attaching a day ends (killed while it waits for the symbol's lock, as in a server
    restart): the collector drops the day's table, writes the day through the writer instead and
    ends the run complete, every row once; the days after it still take the bulk path."""

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            watcher = await asyncpg.connect(db_url)
            holder, tx = await hold_symbol_lock(db_url)
            task = asyncio.create_task(run_collect(settings, db_url, ["BTCUSDT"], D9, D11))
            blocked = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%agg_trades:%'"
            pid = None
            for _ in range(3000):
                pid = await watcher.fetchval(blocked)
                if pid or task.done():
                    break
                await asyncio.sleep(0.01)
            assert pid, "D9's attach never waited for the symbol's lock"
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.2)
            await tx.rollback()
            await holder.close()
            report = await asyncio.wait_for(task, 120)
            rep = report.symbols["BTCUSDT"]
            assert report.ok and rep.days_archive == [D9, D10, D11]
            d9 = await watcher.fetchval(
                "SELECT row_count FROM agg_trade_coverage WHERE symbol = 'BTCUSDT' AND day = $1", D9
            )
            assert d9 > 0 and rep.rows_bulk == rep.rows - d9  # D9 by the writer, D10 and D11 in bulk
            assert await watcher.fetchval("SELECT count(*) FROM agg_trade_gaps") == 0
            await watcher.close()
            ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
            assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) == rep.rows

    asyncio.run(main())
    assert partitions(db_url) == ["agg_trades_p20220809", "agg_trades_p20220810", "agg_trades_p20220811"]
    assert load_tables(db_url) == []
