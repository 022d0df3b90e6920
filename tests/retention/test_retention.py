"""`microstructure retention` on the embedded PostgreSQL: old days go only once the Parquet export
holds them and the features are materialised; what is kept (and the bars and files of what went)
stays exactly as it was."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "export"))

from ex_helpers import write_hours

from microstructure.cli import main
from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig, LocalExchange
from microstructure.export.exporter import export_once
from microstructure.features_sql.refresher import refresh_pending
from microstructure.ingest.collectors.all import collect_all
from microstructure.ingest.sink.writer import write_batch
from microstructure.retention import NoExportYet, ScheduledRetention, run_retention, run_scheduled

D1, D2, D3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)  # write_hours: 03-01 20:00 .. 03-03 02:00
NOW = datetime(2026, 3, 4, tzinfo=UTC)


def _features(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT f::text FROM features_1m f ORDER BY symbol, bucket").fetchall()


def _manifests(root: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(root)): json.loads(p.read_text())["hours"]
        for p in sorted((root / "_manifests").rglob("*.json"))
    }


def _partition_bytes(url: str, table: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(
            conn.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = %s::regclass",
                (table,),
            ).fetchall()
        )


def test_retention_drops_exported_materialised_days_and_changes_nothing_kept(
    db_url: str, tmp_path: Path
) -> None:
    asyncio.run(write_hours(db_url, hours=30, trades_per_hour=2000))
    with pytest.raises(NoExportYet, match="no Parquet export"):
        asyncio.run(run_retention(db_url, 1, today=D3))
    out = tmp_path / "parquet"
    export_once(db_url, out, now=NOW)
    features = _features(db_url)
    manifests = _manifests(out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("data.parquet"))
    before = _partition_bytes(db_url, "agg_trades")
    assert set(before) == {"agg_trades_p20260301", "agg_trades_p20260302", "agg_trades_p20260303"}

    rep = asyncio.run(run_retention(db_url, 1, today=D3))  # keep 03-02 and 03-03
    by_table = {t.table: t for t in rep.tables}
    assert by_table["agg_trades"].dropped_days == [D1] and by_table["agg_trades"].layout == "partitioned"
    assert by_table["book_snapshots"].dropped_days == [D1]
    assert by_table["mark_prices"].dropped_days == [D1] and by_table["mark_prices"].layout == "plain"
    assert by_table["agg_trades"].held is None
    after = _partition_bytes(db_url, "agg_trades")
    assert set(after) == {"agg_trades_p20260302", "agg_trades_p20260303"}  # the day's disk is freed
    assert after == {k: v for k, v in before.items() if k in after}
    with psycopg.connect(db_url) as conn:
        for table in ("agg_trades", "book_snapshots", "mark_prices"):
            old = conn.execute(f"SELECT count(*) FROM {table} WHERE ts < '2026-03-02'").fetchone()
            assert old == (0,), table  # a dropped range answers with no rows, not an error
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE ts >= '2026-03-02'").fetchone()[0] > 0
        assert conn.execute("SELECT min(day) FROM agg_trade_coverage").fetchone() == (D2,)
        event = conn.execute("SELECT detail FROM ingest_events WHERE kind = 'retention'").fetchone()[0]
        assert event["tables"]["agg_trades"] == ["2026-03-01"]
    # features (of kept days and of the dropped one) and the Parquet files are unchanged, also after
    # another refresh and another export
    assert _features(db_url) == features

    async def refresh() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            await refresh_pending(conn)
        finally:
            await conn.close()

    asyncio.run(refresh())
    assert _features(db_url) == features
    export_once(db_url, out, now=NOW)
    assert _manifests(out) == manifests
    assert sorted(str(p.relative_to(out)) for p in out.rglob("data.parquet")) == files

    # a late write into 03-02 the refresher has not taken yet: 03-02 stays, with the reason
    async def late() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            import pyarrow as pa

            row = pa.table({
                "agg_id": [900_000], "ts_ms": [int(datetime(2026, 3, 2, 12, tzinfo=UTC).timestamp() * 1000)],
                "price": [100.0], "quantity": [1.0], "first_trade_id": [1], "last_trade_id": [1],
                "is_buyer_maker": [False],
            })  # fmt: skip
            assert await write_batch(conn, "agg_trades", "AAAUSDT", row) == 1
        finally:
            await conn.close()

    asyncio.run(late())
    rep2 = asyncio.run(run_retention(db_url, 1, today=date(2026, 3, 4), tables=["agg_trades"]))
    held = rep2.tables[0].held
    assert rep2.tables[0].dropped_days == [] and held is not None and held[0] == D2
    assert "feature refresher" in held[1]
    assert set(_partition_bytes(db_url, "agg_trades")) == {"agg_trades_p20260302", "agg_trades_p20260303"}


def test_retention_cli_refuses_without_an_export_and_forces(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_hours(db_url, hours=6, trades_per_hour=500))  # 03-01 20:00 .. 03-02 02:00: long past
    args = ["--database-url", db_url, "--home", str(tmp_path / "home"), "retention"]
    assert main([*args, "--keep-days", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Parquet export" in err and "--force" in err
    assert main([*args, "--keep-days", "0"]) == 2
    assert "--keep-days" in capsys.readouterr().err
    assert main([*args, "--keep-days", "3", "--table", "trades"]) == 2
    assert "unknown raw table 'trades'" in capsys.readouterr().err
    assert main([*args, "--keep-days", "1", "--force", "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone()[0] > 0
    assert main([*args, "--keep-days", "1", "--force", "--table", "agg_trades,book_snapshots"]) == 0
    out = capsys.readouterr().out
    assert "agg_trades (partitioned): dropped 2 days" in out
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM agg_trades").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM book_snapshots").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM mark_prices").fetchone()[0] > 0  # not asked for


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_scheduled_retention_waits_for_the_export_then_drops_the_old_days(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(write_hours(db_url, hours=6, trades_per_hour=500))  # 03-01 20:00 .. 03-02 02:00
    before = _count(db_url, "agg_trades")
    out = tmp_path / "parquet"

    async def go() -> tuple[ScheduledRetention, int]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_scheduled(db_url, 1, stop, interval=0.1))
        await asyncio.sleep(0.6)  # several rounds with no export yet: nothing may go
        unexported = _count(db_url, "agg_trades")
        await asyncio.to_thread(export_once, db_url, out, now=NOW)
        for _ in range(100):  # the next round drops what the export now holds
            if _count(db_url, "agg_trades") == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # and the rounds after it find nothing more
        stop.set()
        return await asyncio.wait_for(task, 10), unexported

    with caplog.at_level("WARNING", logger="microstructure.retention"):
        done, unexported = asyncio.run(go())
    assert before > 0 and unexported == before
    assert [r.getMessage() for r in caplog.records if "no Parquet export" in r.getMessage()] != []
    assert sum("no Parquet export" in r.getMessage() for r in caplog.records) == 1  # said once
    assert done.rounds >= 6 and done.waiting == ""
    assert done.dropped["agg_trades"] == [D1, D2] and done.dropped["book_snapshots"] == [D1, D2]
    assert _count(db_url, "agg_trades") == 0 and _count(db_url, "book_snapshots") == 0
    assert done.summary_lines()[0].startswith(f"retention (keep 1 days, {done.rounds} rounds): dropped ")
    assert "agg_trades 2 days (2026-03-01 .. 2026-03-02)" in done.summary_lines()[0]


def test_collect_all_live_runs_retention_beside_the_collectors(db_url: str, tmp_path: Path) -> None:
    """A live run with --retention-keep-days drops the exported old days while today's rows land."""
    asyncio.run(write_hours(db_url, hours=6, trades_per_hour=500))
    export_once(db_url, tmp_path / "parquet", now=NOW)
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), seed=3, history_days=0, live_rate=50.0, cache_dir=tmp_path / "c"
    )

    async def go() -> object:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            return await collect_all(
                settings, db_url, ["BTCUSDT"], live_seconds=3, handle_signals=False,
                retention_keep_days=1, retention_interval=0.5,
            )  # fmt: skip

    report = asyncio.run(go())
    assert report.ok, report.problems()  # type: ignore[attr-defined]
    done = report.parts["retention"]  # type: ignore[attr-defined]
    assert isinstance(done, ScheduledRetention) and done.rounds >= 2
    assert done.dropped["agg_trades"] == [D1, D2]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM agg_trades WHERE ts < '2026-03-03'").fetchone() == (0,)
        live = conn.execute("SELECT count(*) FROM agg_trades WHERE symbol = 'BTCUSDT'").fetchone()[0]
    assert live > 10  # the live rows of today are stored
    assert any(line.startswith("  retention (keep 1 days") for line in report.summary_lines())  # type: ignore[attr-defined]


def test_collect_all_retention_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--home", str(tmp_path / "home"), "collect", "all", "--symbol", "BTCUSDT"]
    for extra, expected in (
        (["--mode", "historical", "--days", "1", "--retention-keep-days", "3"], "only with --mode live"),
        (["--retention-keep-days", "0"], "--retention-keep-days: expected an integer from 1"),
        (["--retention-keep-days", "2", "--retention-interval", "soon"], "--retention-interval: expected"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
