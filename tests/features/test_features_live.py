"""Features over data from the local exchange: a historical day and 3 live minutes of `collect all`
for 2 symbols (trades, book snapshots, mark prices, funding, open interest), against the pandas
reference on embedded PostgreSQL and, with the same rows, on PGlite TimescaleDB; and the live
promise: every closed minute is in features_1m, final, within lateness + refresh interval."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fx_helpers import assert_frames_match, copy_raw_rows, load_raw, read_features
from reference import features

from microstructure.exchange import ExchangeConfig, ExchangeThread
from microstructure.exchange.archives import kline_table
from microstructure.features_sql.stages import TIMEFRAMES

SYMBOLS = ("BTCUSDT", "ETHUSDT")
START = datetime(2024, 3, 6, 12, 0, 5, tzinfo=UTC)  # 5 s into a minute, away from funding times
LIVE_SECONDS = 185
LATENESS_S = 10  # FEATURES.md's default lateness allowance
INTERVAL_S = 5  # --features-interval
POLL_S = 1.0


def _collect(
    db: str, home: Path, ex_url: str, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "microstructure", "--database-url", db, "--home", str(home), "collect", "all",
           "--symbol", ",".join(SYMBOLS), "--exchange-url", ex_url, *args]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


class Watcher:
    """Polls features_1m while the collector runs: when (exchange clock) each bar first had each value."""

    def __init__(self, dsn: str, now_ms: Any) -> None:
        self.dsn = dsn
        self.now_ms = now_ms
        self.seen: list[tuple[int, dict[tuple[str, datetime], tuple[Any, ...]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                t = self.now_ms()
                rows = conn.execute(
                    "SELECT symbol, bucket, trade_count, volume, snapshot_count, mark_price, open_interest "
                    "FROM features_1m WHERE bucket >= %s",
                    (START.replace(second=0),),
                ).fetchall()
                self.seen.append((t, {(r[0], r[1]): tuple(r[2:]) for r in rows}))
                self._stop.wait(POLL_S)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def first_final(self, key: tuple[str, datetime], final: tuple[Any, ...]) -> int | None:
        for t, rows in self.seen:
            if rows.get(key) == final:
                return t
        return None


def _kline_closes(ex: ExchangeThread, start: datetime, end_ms: int) -> dict[tuple[str, str, int], float]:
    """(symbol, mark | index, minute ms) -> the close the exchange's 1m kline archive gives the minute
    (built from the per-second values the mark stream publishes), over the live minutes."""
    t0 = int(start.timestamp() * 1000) // 60_000 * 60_000
    out = {}
    for s in SYMBOLS:
        for name in ("mark", "index"):
            table = kline_table(*ex.markets[s].series(t0, end_ms, name), t0, end_ms, 8)
            for t, c in zip(table["open_time"].to_pylist(), table["close"].to_pylist(), strict=True):
                out[(s, name, t)] = float(c)
    return out


@pytest.fixture(scope="module")
def exchange_run(
    pg_server: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One historical day plus 3 live minutes collected into a database of their own."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    db = pg_server.rsplit("/", 1)[0] + "/" + name
    home = tmp_path_factory.mktemp("features-live")
    cfg = ExchangeConfig(
        symbols=SYMBOLS, seed=5, history_days=1, trades_per_day=20_000, live_rate=15.0, clock_start=START,
        cache_dir=tmp_path_factory.mktemp("features-exchange"),
    )  # fmt: skip
    with ExchangeThread(cfg) as ex:
        hist = _collect(db, home, ex.base_url, "--mode", "historical", "--days", "1", timeout=300)
        assert hist.returncode == 0, hist.stderr[-3000:]
        with Watcher(db, ex.now_ms) as watcher:
            live = _collect(
                db, home, ex.base_url, "--mode", "live", "--live-seconds", str(LIVE_SECONDS),
                "--features-interval", str(INTERVAL_S), "--oi-interval", "5", timeout=LIVE_SECONDS + 120,
            )  # fmt: skip
            end_ms = ex.now_ms()
        assert live.returncode == 0, live.stderr[-3000:]
        klines = _kline_closes(ex, START, end_ms)
    try:
        yield {
            "db": db, "hist": hist.stdout, "live": live.stdout, "watcher": watcher, "end_ms": end_ms,
            "klines": klines,
        }  # fmt: skip
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_historical_and_live_features_equal_the_reference(exchange_run: dict[str, Any]) -> None:
    db = exchange_run["db"]
    assert "features (refresher)" in exchange_run["hist"], exchange_run["hist"]
    assert "features (refresher)" in exchange_run["live"], exchange_run["live"]
    raw = load_raw(db)
    # every source is there: a historical day of trades and open interest, live books and marks
    assert len(raw.agg_trades) > 20_000 and len(raw.book_snapshots) > 600 and len(raw.mark_prices) > 300
    assert raw.open_interest["ts"].min() < START and raw.funding_rates["funding_ts"].min() < START
    for tf in TIMEFRAMES:
        want = features(raw, tf)
        assert_frames_match(read_features(db, tf), want, label=f"exchange data {tf}")
    # the live minutes that are whole (not the first, begun at 12:00:05, nor the last) have every source
    got = read_features(db, "1m")
    buckets = got.index.get_level_values("bucket")
    whole = got[(buckets > START.replace(second=0)) & (buckets < buckets.max())]
    assert len(whole) >= 2 * len(SYMBOLS)
    assert whole["snapshot_count"].min() >= 110 and whole["trade_count"].min() >= 300
    assert whole["mark_price"].notna().all() and whole["open_interest"].notna().all()


def test_live_mark_and_index_follow_the_rule_of_the_kline_archives(exchange_run: dict[str, Any]) -> None:
    """docs/FEATURES.md "Market": one rule for history and live. A live minute whose last mark price
    came in its last second has the mark and index prices the kline archive of that minute closes at."""
    with psycopg.connect(exchange_run["db"]) as conn:
        rows = conn.execute(
            "SELECT m.symbol, m.minute, f.mark_price, f.index_price FROM ("
            "  SELECT symbol, date_trunc('minute', ts) AS minute, max(ts) AS last FROM mark_prices GROUP BY 1, 2"
            ") m JOIN features_1m f ON f.symbol = m.symbol AND f.bucket = m.minute "
            "WHERE m.last >= m.minute + INTERVAL '59 seconds'"
        ).fetchall()
    klines = exchange_run["klines"]
    for sym, minute, mark, index in rows:
        t = int(minute.timestamp() * 1000)
        assert (mark, index) == (klines[(sym, "mark", t)], klines[(sym, "index", t)]), (sym, minute)
    assert len(rows) >= len(SYMBOLS)


def test_every_closed_minute_is_final_within_lateness_plus_refresh_interval(
    exchange_run: dict[str, Any],
) -> None:
    watcher: Watcher = exchange_run["watcher"]
    with psycopg.connect(exchange_run["db"]) as conn:
        rows = conn.execute(
            "SELECT symbol, bucket, bucket_end, trade_count, volume, snapshot_count, mark_price, open_interest "
            "FROM features_1m WHERE bucket >= %s",
            (START.replace(second=0),),
        ).fetchall()
    deadline_s = LATENESS_S + INTERVAL_S + POLL_S
    checked = 0
    for sym, bucket, end, *final in rows:
        close_ms = int(end.timestamp() * 1000)
        if close_ms + deadline_s * 1000 > exchange_run["end_ms"] - 2_000:
            continue  # closed too late in the run to be judged (the last minute, the run's tail fill)
        seen = watcher.first_final((sym, bucket), tuple(final))
        assert seen is not None, f"{sym} {bucket}: never seen with its final values"
        assert seen - close_ms <= deadline_s * 1000, (
            f"{sym} {bucket}: final {(seen - close_ms) / 1000:.1f} s after close"
        )
        checked += 1
    assert checked >= 2 * len(SYMBOLS)  # at least the first minutes of both symbols were judged


@pytest.mark.pglite
def test_the_same_rows_on_timescaledb_continuous_aggregates(
    exchange_run: dict[str, Any], pglite_db: str
) -> None:
    import asyncio

    import asyncpg

    from microstructure.features_sql.refresher import refresh_range

    copy_raw_rows(exchange_run["db"], pglite_db)

    async def go() -> None:
        conn = await asyncpg.connect(pglite_db)
        try:
            await refresh_range(conn, force=False)
        finally:
            await conn.close()

    asyncio.run(go())
    raw = load_raw(exchange_run["db"])
    for tf in TIMEFRAMES:
        assert_frames_match(read_features(pglite_db, tf), features(raw, tf), label=f"timescaledb {tf}")
