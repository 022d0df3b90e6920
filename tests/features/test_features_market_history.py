"""Mark, index, premium and funding over backfilled history and across the switch to live
(docs/FEATURES.md "Market"): the 1m mark / index klines of price_klines where no mark stream was
collected, the stream where it was, one rule (the bar's last value) for both; funding_rate the
settled rate everywhere, the stream's predicted rate in its own column. Every column against the
pandas reference from the raw rows, on plain PostgreSQL (refresher, through the invalidation log)
and PGlite TimescaleDB (continuous aggregates), plus the rules value by value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import psycopg
import pyarrow as pa
import pytest
from fx_cases import MIN, funding, marks
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

from microstructure.features_sql import refresher
from microstructure.features_sql.stages import TIMEFRAMES
from microstructure.ingest.records import PRICE_KLINES
from microstructure.ingest.sink.writer import merge_table, write_batch

HOUR = 60 * MIN
T0 = int(datetime(2026, 3, 2, 7, 30, tzinfo=UTC).timestamp() * 1000)  # 07:30; settlement at 08:00
SETTLE = T0 + 30 * MIN
HIST = "HISTUSDT"  # klines and settled funding only: a backfilled symbol
LIVE = "LIVEUSDT"  # klines for every minute, the mark stream for part of them
STREAM_LO, STREAM_HI = T0 + 17 * MIN + 30_000, T0 + 32 * MIN + 20_000  # 07:47:30 .. 08:02:20
MINUTES = 45  # 07:30 .. 08:14
NO_MARK, NO_INDEX = 7, 12  # HIST: minutes without a mark kline / an index kline


def kline_close(symbol: str, kind: str, k: int) -> float:
    base = {HIST: 200.0, LIVE: 300.0}[symbol] - (0.1 if kind == "index" else 0.0)
    return base + 0.1 * k + (5.0 if kind == "premium" else 0.0)


def stream_mark(t_ms: int) -> float:  # never equal to a kline close: which source won is visible
    return 300.0 + (t_ms - T0) / 600_000 + 0.0037


def klines(symbol: str, minutes: range, skip: dict[str, int] | None = None) -> pa.Table:
    rows = [
        (kind, T0 + k * MIN, kline_close(symbol, kind, k))
        for k in minutes
        for kind in ("mark", "index", "premium")
        if (skip or {}).get(kind) != k
    ]
    ts = np.array([r[1] for r in rows], np.int64)
    close = np.array([r[2] for r in rows])
    return pa.table({
        "symbol": pa.array([symbol] * len(rows)), "kind": pa.array([r[0] for r in rows]), "ts": ts,
        "open": close - 0.01, "high": close + 0.02, "low": close - 0.03, "close": close, "close_ts": ts + 59_999,
    })  # fmt: skip


async def write_market_history(dsn: str, *, late_minutes: int = 0) -> None:
    """HIST: klines of every minute (one without a mark kline, one without an index kline);
    LIVE: klines of every minute and the stream 07:47:30 .. 08:02:20 (1 s apart, an index price
    missing now and then, a predicted rate r unlike the settled one). Both: settlements at 00:00
    (carried from before the range) and 08:00. `late_minutes`: LIVE's last klines are held back."""
    conn = await asyncpg.connect(dsn)
    try:
        await merge_table(
            conn,
            "price_klines",
            klines(HIST, range(MINUTES), {"mark": NO_MARK, "index": NO_INDEX}),
            PRICE_KLINES,
        )
        await merge_table(conn, "price_klines", klines(LIVE, range(MINUTES - late_minutes)), PRICE_KLINES)
        rows = []
        for i, t in enumerate(range(STREAM_LO, STREAM_HI + 1, 1000)):
            idx = None if i % 13 == 5 else stream_mark(t) - 0.08
            rows.append((t, stream_mark(t), idx, None if i % 7 == 3 else 0.0004 + 1e-6 * (i % 5)))
        await write_batch(conn, "mark_prices", LIVE, marks(rows))
        for sym in (HIST, LIVE):
            await write_batch(
                conn, "funding_rates", sym,
                funding([(SETTLE - 16 * HOUR, 0.00005), (SETTLE - 8 * HOUR, 0.0001), (SETTLE, 0.00025)]),
            )  # fmt: skip
    finally:
        await conn.close()


async def write_late_klines(dsn: str, late_minutes: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await merge_table(
            conn, "price_klines", klines(LIVE, range(MINUTES - late_minutes, MINUTES)), PRICE_KLINES
        )
    finally:
        await conn.close()


def assert_equal_reference(features_dsn: str, raw_dsn: str, label: str) -> None:
    raw = load_raw(raw_dsn)
    assert raw.price_klines is not None and len(raw.price_klines) == 3 * 2 * MINUTES - 2
    for tf in TIMEFRAMES:
        assert_column_types(features_dsn, tf)
        assert_frames_match(read_features(features_dsn, tf), features(raw, tf), label=f"{label} {tf}")


def bar(dsn: str, tf: str, symbol: str, ms: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            f"SELECT * FROM features_{tf} WHERE symbol = %s AND bucket = %s",
            (symbol, datetime.fromtimestamp(ms / 1000, tz=UTC)),
        )
        row = cur.fetchone()
        assert row is not None, (tf, symbol, ms)
        return dict(zip([d.name for d in cur.description or []], row, strict=True))


def column(dsn: str, tf: str, symbol: str, name: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT {name} FROM features_{tf} WHERE symbol = %s ORDER BY bucket", (symbol,)
        )]  # fmt: skip


def check_rules(dsn: str) -> None:
    b = lambda tf, s, k: bar(dsn, tf, s, T0 + k * MIN)  # noqa: E731
    # history: every bar from the klines (bars exist without trades); the bar's last minute's close
    assert len(column(dsn, "1m", HIST, "bucket")) == MINUTES
    h = b("1m", HIST, 3)
    assert (h["mark_price"], h["index_price"]) == (
        kline_close(HIST, "mark", 3),
        kline_close(HIST, "index", 3),
    )
    assert h["spot_premium_pct"] == pytest.approx(
        (h["mark_price"] - h["index_price"]) / h["index_price"] * 100
    )
    assert h["spot_premium_pct"] != kline_close(HIST, "premium", 3)  # the premium-index kline is not read
    missing = b("1m", HIST, NO_MARK)  # no mark kline in the minute: no mark, no premium; index there
    assert missing["mark_price"] is None and missing["spot_premium_pct"] is None
    assert missing["index_price"] == kline_close(HIST, "index", NO_MARK)
    five = b("5m", HIST, 5)  # 07:35..07:39: the last minute's closes
    assert (five["mark_price"], five["index_price"]) == (
        kline_close(HIST, "mark", 9),
        kline_close(HIST, "index", 9),
    )
    five = b("5m", HIST, 10)  # 07:40..07:44, the index kline of 07:42 missing: still 07:44's
    assert five["index_price"] == kline_close(HIST, "index", 14)
    for name in ("mark_price", "index_price", "spot_premium_pct", "funding_rate"):
        for tf in ("5m", "15m"):
            assert None not in column(dsn, tf, HIST, name), (tf, name)
    assert set(column(dsn, "1m", HIST, "funding_rate_predicted")) == {None}  # live only
    # the stream wins every minute it has a row in; its last value of the minute
    s = b("1m", LIVE, 18)
    assert s["mark_price"] == stream_mark(T0 + 18 * MIN + 59_000) and s["funding_rate_predicted"] is not None
    assert b("1m", LIVE, 17)["mark_price"] == stream_mark(T0 + 17 * MIN + 59_000)  # stream from 07:47:30
    assert b("1m", LIVE, 16)["mark_price"] == kline_close(LIVE, "mark", 16)
    assert b("1m", LIVE, 33)["mark_price"] == kline_close(LIVE, "mark", 33)  # stream ended 08:02:20
    assert b("5m", LIVE, 15)["mark_price"] == stream_mark(T0 + 19 * MIN + 59_000)  # stream to the end
    # 08:00..08:04: the stream left at 08:02:20, the klines' last minute 08:04 is the bar's last value
    assert b("5m", LIVE, 30)["mark_price"] == kline_close(LIVE, "mark", 34)
    assert b("15m", LIVE, 15)["mark_price"] == stream_mark(T0 + 29 * MIN + 59_000)
    predicted = column(dsn, "1m", LIVE, "funding_rate_predicted")
    assert [v is not None for v in predicted] == [17 <= k <= 32 for k in range(MINUTES)]
    # funding: the settled rate on both sides of the switch (07:47) and on every bar of LIVE as of
    # HIST; funding_delta is the settled change: 0 at the switch, +0.00015 in the 08:00 bar only
    for tf in TIMEFRAMES:
        assert column(dsn, tf, LIVE, "funding_rate") == column(dsn, tf, HIST, "funding_rate")
    assert b("1m", LIVE, 16)["funding_rate"] == b("1m", LIVE, 17)["funding_rate"] == 0.0001
    assert b("1m", LIVE, 17)["funding_delta"] == 0.0
    for tf, k in (("1m", 30), ("5m", 30), ("15m", 30)):
        got = b(tf, LIVE, k)
        assert got["funding_rate"] == 0.00025 and got["funding_delta"] == pytest.approx(0.00015, rel=1e-12), (
            tf
        )
    deltas = column(dsn, "1m", LIVE, "funding_delta")
    assert [k for k, d in enumerate(deltas) if d != 0] == [30]


def test_market_history_on_postgresql(db_url: str) -> None:
    run(write_market_history(db_url, late_minutes=10))
    run(call_with_conn(db_url, refresher.refresh_pending))
    # the klines archived later (a backfill after the live run): the invalidation log carries them
    run(write_late_klines(db_url, 10))
    with psycopg.connect(db_url) as conn:
        logged = conn.execute(
            "SELECT count(*) FROM raw_invalidations WHERE table_name = 'price_klines'"
        ).fetchone()
    assert logged[0] > 0
    report = run(call_with_conn(db_url, refresher.refresh_pending))
    assert report.windows >= 1
    assert_equal_reference(db_url, db_url, "postgresql")
    check_rules(db_url)


@pytest.mark.pglite
def test_market_history_on_timescaledb_continuous_aggregates(db_url: str, pglite_db: str) -> None:
    run(write_market_history(db_url))
    copy_raw_rows(db_url, pglite_db)
    report = run(call_with_conn(pglite_db, refresher.refresh_range, force=False))
    assert report.engine == "continuous_aggregates"
    assert_equal_reference(pglite_db, db_url, "timescaledb")
    check_rules(pglite_db)
