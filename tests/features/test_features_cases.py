"""features_1m/5m/15m on hand-made rows, on embedded PostgreSQL (refresher) and on PGlite TimescaleDB
(continuous aggregates): every column against the pandas reference, plus the edge rules by value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from fx_cases import MIDNIGHT, MIN, OTHER, SYM, T0, trades, write_cases
from fx_helpers import (
    assert_column_types,
    assert_frames_match,
    call_with_conn,
    copy_raw_rows,
    load_raw,
    read_features,
    run,
)
from reference import features

from microstructure.cli import main
from microstructure.features_sql import refresher
from microstructure.features_sql.stages import TIMEFRAMES
from microstructure.ingest.sink.writer import write_batch


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def refresh(dsn: str, **kw: Any) -> refresher.RefreshReport:
    return run(call_with_conn(dsn, refresher.refresh_pending, **kw))


def refresh_all(dsn: str, **kw: Any) -> refresher.RefreshReport:
    return run(call_with_conn(dsn, refresher.refresh_range, **kw))


def assert_equal_reference(features_dsn: str, raw_dsn: str, label: str) -> None:
    raw = load_raw(raw_dsn)
    for tf in TIMEFRAMES:
        assert_column_types(features_dsn, tf)
        assert_frames_match(read_features(features_dsn, tf), features(raw, tf), label=f"{label} {tf}")


def bar(dsn: str, tf: str, symbol: str, ms: int) -> dict[str, Any] | None:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM features_{tf} WHERE symbol = %s AND bucket = %s", (symbol, at(ms)))
        row = cur.fetchone()
        return None if row is None else dict(zip([d.name for d in cur.description or []], row, strict=True))


def check_edge_rules(dsn: str) -> None:
    """FEATURES.md's edge rules on the hand-made rows, value by value."""
    b = lambda ms, s=SYM, tf="1m": bar(dsn, tf, s, ms)  # noqa: E731
    # a minute with no row in any source has no bar; one with only a snapshot has book values only
    assert b(T0 + 8 * MIN) is None and b(T0 + 9 * MIN) is None
    one = b(T0 + 2 * MIN)
    assert one["snapshot_count"] == 1 and one["spread_std"] is None and one["spread_avg"] is not None
    assert one["trade_count"] is None and one["cvd"] is None and one["volume"] is None
    # the trade at exactly 23:55:00.000 opens the 23:55 bar; 23:54 has liquidations but no trades
    edge = b(T0 + 5 * MIN)
    assert edge["open"] == 101.0 and edge["trade_count"] == 7 and edge["large_trade_count"] == 1
    assert edge["sell_volume"] == 3.0 and edge["buy_volume"] == 2000.0
    assert b(T0 + 4 * MIN)["trade_count"] is None
    # cvd runs through the day and restarts at 00:00 UTC (the trade at exactly midnight is the new day's)
    first = b(T0)
    assert edge["cvd"] == pytest.approx(first["volume_delta"] + edge["volume_delta"], rel=1e-12)
    night = b(MIDNIGHT)
    assert night["cvd"] == pytest.approx(night["volume_delta"], rel=1e-12) and night["open"] == 102.0
    assert first["trade_intensity_1s"] == 3.0 and first["trade_count"] > 40
    # funding from settled rates only where a bar has no mark price with r; the midnight settlement
    # belongs to the 00:00 bar; the delta compares with the calendar-previous (absent) bar
    assert b(T0 + 6 * MIN)["funding_rate"] == 0.0002
    assert night["funding_rate"] == 0.0005
    assert night["funding_delta"] == pytest.approx(0.0003, rel=1e-12)
    assert b(T0 + 7 * MIN)["funding_delta"] == 0.0
    # open interest carried over quiet bars; the change against the previous bar's
    assert [b(T0 + k * MIN)["open_interest"] for k in (2, 3, 4, 5)] == [12_000.0] * 4
    assert b(T0 + 6 * MIN)["open_interest"] == 12_600.0
    assert b(T0 + 6 * MIN)["oi_change_pct"] == pytest.approx(5.0, rel=1e-12)
    assert b(T0 + 7 * MIN)["oi_change_pct"] == 0.0
    assert b(T0 + 4 * MIN, OTHER)["oi_change_pct"] is None  # previous open interest 0
    # liquidations of one side only: the other side's volume is 0, the ratio 1
    liq = b(T0 + 4 * MIN)
    assert (liq["liq_long_vol"], liq["liq_short_vol"], liq["liq_ratio"]) == (4.0, 0.0, 1.0)
    assert b(T0 + 7 * MIN)["liq_ratio"] == 0.75
    assert b(T0 + 2 * MIN)["liq_long_vol"] is None
    # an empty ask side makes a snapshot's imbalance +1: the 23:53 bar mixes 3-level and empty asks
    assert 0 < b(T0 + 3 * MIN)["imbalance_20"] < 1
    # 5m and 15m: the same definitions over wider bars (the reference computes them from raw rows)
    assert bar(dsn, "15m", SYM, T0 - 5 * MIN)["trade_count"] == first["trade_count"] + edge["trade_count"]


def test_a_refresh_of_a_few_days_cuts_them_finer_to_keep_its_connections_busy() -> None:
    def size(days: float, connections: int) -> timedelta:
        lo = datetime(2026, 3, 1, tzinfo=UTC)
        return refresher.chunk_size(
            [refresher.Window("agg_trades", lo, lo + timedelta(days=days), None)], connections
        )

    hours = lambda h: timedelta(hours=h)  # noqa: E731
    assert size(1, 1) == size(90, 1) == hours(24)  # one connection: a day per transaction
    assert size(90, 2) == size(4, 2) == hours(24)  # two days or more for each connection
    assert (size(3, 2), size(2, 2), size(1.5, 2), size(1, 2), size(1, 3)) == tuple(
        map(hours, (12, 12, 6, 6, 3))
    )
    assert size(1 / 24, 2) == hours(1)  # never below an hour
    for chunk in refresher.CHUNKS:  # chunks end on the edges of every stage's buckets
        assert all(
            chunk % timedelta(seconds=s.seconds) == timedelta(0) for s in refresher.STAGE_BY_NAME.values()
        )


def test_hand_made_cases_on_postgresql(db_url: str) -> None:
    run(write_cases(db_url))
    report = refresh(db_url)
    assert report.engine == "refresher" and report.rows_written > 0
    assert_equal_reference(db_url, db_url, "postgresql")
    check_edge_rules(db_url)
    # nothing new written: the next refresh has nothing to do
    assert refresh(db_url).windows == 0


@pytest.mark.pglite
def test_hand_made_cases_on_timescaledb_continuous_aggregates(db_url: str, pglite_db: str) -> None:
    run(write_cases(db_url))
    copy_raw_rows(db_url, pglite_db)
    report = refresh_all(pglite_db, force=False)
    assert report.engine == "continuous_aggregates"
    assert_equal_reference(pglite_db, db_url, "timescaledb")
    check_edge_rules(pglite_db)
    with psycopg.connect(pglite_db) as conn:
        caggs = {r[0]: r[1] for r in conn.execute(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        )}  # fmt: skip
        policies = conn.execute(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_refresh_continuous_aggregate'"
        ).fetchone()[0]
    assert len(caggs) == len(refresher.STAGE_BY_NAME) and not any(caggs.values())  # real-time aggregation on
    assert policies == len(caggs)


def _late_trade(dsn: str, late: tuple[int, int, float, float, bool]) -> None:
    async def go(conn: asyncpg.Connection) -> None:
        await write_batch(conn, "agg_trades", SYM, trades([late]))

    run(call_with_conn(dsn, go))


def test_late_row_after_a_refresh_corrects_its_bars(db_url: str) -> None:
    times = run(write_cases(db_url))
    refresh(db_url)
    before = {
        tf: bar(db_url, tf, SYM, T0 - (5 * MIN if tf == "15m" else 0))["trade_count"] for tf in TIMEFRAMES
    }
    _late_trade(db_url, times["late"])
    report = refresh(db_url)
    assert report.windows == 1  # only the late row's window
    after = {
        tf: bar(db_url, tf, SYM, T0 - (5 * MIN if tf == "15m" else 0))["trade_count"] for tf in TIMEFRAMES
    }
    assert after == {tf: n + 1 for tf, n in before.items()}
    assert_equal_reference(db_url, db_url, "late row")


@pytest.mark.pglite
def test_late_row_on_timescaledb_is_picked_up_by_the_aggregates_invalidation(
    db_url: str, pglite_db: str
) -> None:
    times = run(write_cases(db_url))
    copy_raw_rows(db_url, pglite_db)
    refresh_all(pglite_db, force=False)
    _late_trade(db_url, times["late"])
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT * FROM agg_trades WHERE symbol = %s AND agg_id = %s", (SYM, times["late"][0])
        ).fetchone()
    with psycopg.connect(pglite_db) as conn:  # a plain INSERT: no COPY, no log of ours
        conn.execute(f"INSERT INTO agg_trades VALUES ({', '.join(['%s'] * len(row))})", row)
        # the writer closed the id gap the late row filled (quality columns): so does this INSERT's author
        conn.execute(
            "UPDATE agg_trade_gaps SET status = 'filled' WHERE symbol = %s AND from_id <= %s AND to_id >= %s",
            (SYM, times["late"][0], times["late"][0]),
        )
    refresh_all(pglite_db, force=False)  # no force: only what TimescaleDB's own log invalidated
    assert_equal_reference(pglite_db, db_url, "late row timescaledb")


def test_threshold_change_then_features_refresh(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(write_cases(db_url))
    refresh(db_url)
    assert bar(db_url, "1m", OTHER, T0)["large_trade_count"] == 0
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO symbol_settings (symbol, large_trade_notional) VALUES (%s, 100)", (OTHER,))
    # the setting alone changes nothing materialised; `features refresh` re-materialises
    assert bar(db_url, "1m", OTHER, T0)["large_trade_count"] == 0
    assert main(["--database-url", db_url, "features", "refresh", "--symbol", OTHER]) == 0
    out = capsys.readouterr().out
    assert "incremental refresher" in out and OTHER in out
    got = bar(db_url, "1m", OTHER, T0)
    assert (got["large_trade_count"], got["large_trade_volume"], got["large_trade_pct"]) == (1, 10.0, 10 / 11)
    assert_equal_reference(db_url, db_url, "threshold")


@pytest.mark.pglite
def test_threshold_change_on_timescaledb_needs_a_forced_refresh(db_url: str, pglite_db: str) -> None:
    run(write_cases(db_url))
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO symbol_settings (symbol, large_trade_notional) VALUES (%s, 100)", (OTHER,))
    copy_raw_rows(db_url, pglite_db)
    with psycopg.connect(pglite_db) as conn:
        conn.execute("UPDATE symbol_settings SET large_trade_notional = 1e9")
    refresh_all(pglite_db, force=False)
    with psycopg.connect(pglite_db) as conn:
        conn.execute("UPDATE symbol_settings SET large_trade_notional = 100")
    refresh_all(pglite_db, force=False)  # not invalidated: the old threshold stays materialised
    assert bar(pglite_db, "1m", OTHER, T0)["large_trade_count"] == 0
    refresh_all(pglite_db, symbols=[OTHER], start=at(T0 - 60 * MIN), end=at(MIDNIGHT + 60 * MIN))
    assert bar(pglite_db, "1m", OTHER, T0)["large_trade_count"] == 1
    assert_equal_reference(pglite_db, db_url, "threshold timescaledb")


def test_a_refresh_killed_mid_run_leaves_no_half_written_range_and_a_rerun_completes_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(write_cases(db_url))  # trades from 23:50 to after midnight: two day-chunks
    real = refresher._materialise_chunk
    calls: list[tuple[datetime, datetime]] = []

    async def dies_at_midnight(
        conn: Any, stages: Any, symbols: Any, lo: datetime, hi: datetime, report: Any
    ) -> None:
        calls.append((lo, hi))
        if lo == at(MIDNIGHT):  # the chunks before committed; the process dies here
            raise RuntimeError("killed")
        await real(conn, stages, symbols, lo, hi, report)

    monkeypatch.setattr(refresher, "_materialise_chunk", dies_at_midnight)
    with pytest.raises(RuntimeError, match="killed"):
        refresh(db_url)
    assert calls[-2][1] == calls[-1][0] == at(MIDNIGHT)  # the window was cut at midnight
    with psycopg.connect(db_url) as conn:
        stages = conn.execute(
            "SELECT 'trades_1m', count(*), max(bucket) FROM trades_1m UNION ALL "
            "SELECT 'trades_15m', count(*), max(bucket) FROM trades_15m UNION ALL "
            "SELECT 'trade_intensity_15m', count(*), max(bucket) FROM trade_intensity_15m"
        ).fetchall()
        pending = conn.execute("SELECT count(*) FROM raw_invalidations").fetchone()[0]
        cursor = conn.execute("SELECT count(*) FROM invalidation_cursors").fetchone()[0]
    # the first day's chunk is whole in every stage of the group (1m through 15m, 1s through 15m);
    # nothing of the second; the log is untouched, so the rerun knows what is left
    for name, n, last in stages:
        assert n > 0 and last < at(MIDNIGHT), name
    assert pending > 0 and cursor == 0
    monkeypatch.setattr(refresher, "_materialise_chunk", real)
    refresh(db_url)
    assert_equal_reference(db_url, db_url, "after rerun")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM raw_invalidations").fetchone()[0] == 0


def test_features_help_names_the_engine_path(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--database-url", db_url, "features", "refresh", "--help"])
    assert exc.value.code == 0
    assert "Engine path here: the incremental refresher" in capsys.readouterr().out


def test_features_show_prints_bars_and_marks_liquidations_as_lower_bounds(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(write_cases(db_url))
    refresh(db_url)
    assert main(["--database-url", db_url, "features", "show", "--symbol", SYM, "--last", "3"]) == 0
    out = capsys.readouterr().out
    assert "features_1m" in out and "(>=)" in out and "lower bounds" in out
    assert (at(MIDNIGHT)).strftime("%Y-%m-%d %H:%M") in out
    assert main(["--database-url", db_url, "features", "show", "--symbol", SYM, "--timeframe", "1h"]) == 2
    assert "--timeframe: expected one of 1m, 5m, 15m" in capsys.readouterr().err
    assert main(["--database-url", db_url, "features", "show", "--symbol", SYM, "--columns", "nope"]) == 2
    capsys.readouterr()
    argv = ["--database-url", db_url, "features", "show", "--symbol", SYM, "--columns", "bucket,close,close"]
    assert main(argv) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "bucket" in line)
    assert header.count("bucket") == 1 and header.count("close") == 1, header


def test_refresh_windows_align_to_each_stage(db_url: str) -> None:
    """A write of one second re-materialises that minute of the 1m stages, its 5 minutes and its
    quarter hour, no more."""
    run(write_cases(db_url))
    refresh(db_url)
    _late_trade(db_url, (10_000, T0 + 15_500, 99.0, 1.0, True))
    with psycopg.connect(db_url) as conn:
        lo, hi = conn.execute("SELECT lo, hi FROM raw_invalidations").fetchone()
    assert lo == hi == at(T0 + 15_500)
    stage = refresher.STAGE_BY_NAME
    assert refresher.stage_window(stage["trades_1m"], lo, hi + timedelta(microseconds=1)) == (
        at(T0),
        at(T0 + MIN),
    )
    assert refresher.stage_window(stage["trades_15m"], lo, hi) == (at(T0 - 5 * MIN), at(T0 + 10 * MIN))
    assert refresher.stage_window(stage["trades_1s"], lo, hi) == (at(T0), at(T0 + MIN))


def test_one_scan_of_the_raw_trades() -> None:
    """Every trade stage comes from one pass over agg_trades: only trades_1s reads the raw table,
    and every other stage fed by agg_trades reads trades_1s or a stage built from it."""
    from microstructure.features_sql.stages import STAGE_BY_NAME, STAGES

    trade_stages = [s for s in STAGES if s.raw_table == "agg_trades"]
    assert [s.name for s in trade_stages if s.from_raw] == ["trades_1s"]
    assert {s.group for s in trade_stages} == {"trades"}
    for s in trade_stages:
        if not s.from_raw:
            assert s.source in STAGE_BY_NAME and "agg_trades" not in s.select_sql()
    assert STAGES.index(STAGE_BY_NAME["trades_1s"]) < min(
        STAGES.index(s) for s in trade_stages if not s.from_raw
    )


def test_run_jobs_never_overlap() -> None:
    """Chunks run side by side on the connections, but two that rewrite the same buckets never at once."""
    import asyncio

    from microstructure.features_sql.stages import STAGE_BY_NAME

    trades, book = [STAGE_BY_NAME["trades_1s"]], [STAGE_BY_NAME["book_1m"]]
    day = timedelta(days=1)
    d0 = at(T0)
    jobs = [
        refresher.Job(trades, [SYM], d0, d0 + day),
        refresher.Job(trades, [SYM], d0, d0 + day),  # the same window twice (log + forced range)
        refresher.Job(trades, [SYM], d0 + day, d0 + 2 * day),
        refresher.Job(book, [SYM], d0, d0 + day),
    ]
    running: list[refresher.Job] = []
    done: list[tuple[str, refresher.Job]] = []
    most = 0

    async def do(conn: Any, job: refresher.Job) -> None:
        nonlocal most
        assert not any(job.overlaps(r) for r in running)
        running.append(job)
        most = max(most, len(running))
        await asyncio.sleep(0.02)
        running.remove(job)
        done.append((conn, job))

    asyncio.run(refresher.run_jobs(jobs, ["a", "b", "c"], do))  # type: ignore[list-item]
    assert sorted(map(id, (j for _, j in done))) == sorted(map(id, jobs))
    assert most == 3 and {c for c, _ in done} == {"a", "b", "c"}


def test_jobs_overlap_by_the_buckets_they_rewrite() -> None:
    """Two windows of one group meeting at an unaligned time share the 5m/15m bucket around it: their
    jobs overlap (run side by side, both rewrote open_interest_5m 23:55 and one failed on its key)."""
    from microstructure.features_sql.stages import stages_for

    oi = [s for s in stages_for({"open_interest"})]
    d0 = at(T0).replace(hour=0, minute=0, second=0, microsecond=0)  # a midnight
    edge = d0 + timedelta(hours=23, minutes=57)
    a = refresher.Job(oi, [SYM], d0 + timedelta(hours=23), edge)
    b = refresher.Job(oi, [SYM], edge, d0 + timedelta(days=1))
    assert a.overlaps(b) and b.overlaps(a)
    assert a.span()[1] == d0 + timedelta(days=1)  # the 15m stage's bucket 23:45 reaches midnight
    # aligned edges (a day's chunks) touch without sharing a bucket
    c = refresher.Job(oi, [SYM], d0, d0 + timedelta(hours=12))
    d = refresher.Job(oi, [SYM], d0 + timedelta(hours=12), d0 + timedelta(days=1))
    assert not c.overlaps(d)
    # another group never overlaps
    book = refresher.Job(stages_for({"book_snapshots"}), [SYM], d0, d0 + timedelta(days=1))
    assert not book.overlaps(a)
