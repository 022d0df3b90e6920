"""The quality columns of features_1m/5m/15m (docs/FEATURES.md "Quality") on hand-made rows, on embedded
PostgreSQL (refresher) and on PGlite TimescaleDB (continuous aggregates): values by hand, every column
against the pandas reference, and the pull with quality="complete"; then a live run against the local
exchange whose skipped ids REST cannot fill: the live collector's gap reaches the bars."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import psycopg
import pytest
from fx_cases import book_levels, marks, open_interest, snapshots, trades
from fx_helpers import copy_raw_rows, read_features, run
from test_features_cases import assert_equal_reference, refresh, refresh_all

from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig, FaultConfig, LocalExchange
from microstructure.export.pull import PullError, pull_features
from microstructure.ingest.collectors.book_values import BookValues
from microstructure.ingest.collectors.trades_live import collect_aggtrades_live
from microstructure.ingest.sink.writer import Writer, write_batch

SYM = "QQQUSDT"
MIN = 60_000
T = int(datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp() * 1000)  # 15m-aligned
GAP_IN_BAR_2 = (71, 73)  # trades i = 70..72: their neighbours are both in minute 2
GAP_OVER_3_4 = (119, 122)  # i = 118..121: the stored neighbours are in minutes 3 and 4
BOOK_HOLE_3 = range(80, 90)  # a disconnect: 10 slots of minute 3 without a snapshot
BOOK_HOLE_5 = range(20, 24)  # a resync in minute 5 costs 4 slots


async def write_quality_cases(dsn: str) -> None:
    rng = np.random.default_rng(3)
    conn = await asyncpg.connect(dsn)
    try:
        # trades: one every 2 s over minutes 0..6 (i -> agg id i + 1), two id holes
        withheld = {
            *range(GAP_IN_BAR_2[0], GAP_IN_BAR_2[1] + 1),
            *range(GAP_OVER_3_4[0], GAP_OVER_3_4[1] + 1),
        }
        t = [(i + 1, T + 2000 * i + 137, 100 + 0.01 * i, 1.0, i % 2 == 0) for i in range(210)]
        await write_batch(conn, "agg_trades", SYM, trades([r for r in t if r[0] not in withheld]))
        # book: every 500 ms slot of minutes 0..6, minus the holes; minute 1 has a second snapshot
        # in one slot (slots are counted, not snapshots)
        values = BookValues()
        rows: list[tuple[int, int, list, list]] = []
        u = 10
        for m in range(7):
            for k in range(120):
                if (m == 3 and k in BOOK_HOLE_3) or (m == 5 and k in BOOK_HOLE_5):
                    continue
                bids, asks = book_levels(rng, 100 + 0.1 * (k % 3))
                rows.append((T + m * MIN + 500 * k + 3, u, bids, asks))
                u += 2
                if m == 1 and k == 7:
                    rows.append((T + m * MIN + 500 * k + 250, u, bids, asks))
                    u += 2
        await write_batch(conn, "book_snapshots", SYM, snapshots(rows, values, SYM))
        # marks: every second, minus 6 seconds of minute 4; second 70 has two, 71 none
        mk = []
        for s in range(420):
            if 240 <= s < 246 or s == 71:
                continue
            mk.append((T + 1000 * s + 200, 100.0 + 0.001 * s, 100.0, 0.0001))
            if s == 70:
                mk.append((T + 1000 * s + 700, 100.0, 100.0, 0.0001))
        await write_batch(conn, "mark_prices", SYM, marks(mk))
        await write_batch(
            conn, "open_interest", SYM, open_interest([(T + 30_000, 5000.0), (T + 200_000, 5100.0)])
        )
        # the gaps as the collectors record them (plus a filled one, which counts nothing)
        await conn.execute("DELETE FROM agg_trade_gaps WHERE symbol = $1", SYM)
        await conn.executemany(
            "INSERT INTO agg_trade_gaps (symbol, from_id, to_id, status) VALUES ($1, $2, $3, $4)",
            [(SYM, *GAP_IN_BAR_2, "open"), (SYM, *GAP_OVER_3_4, "unfillable"), (SYM, 40, 42, "filled")],
        )
        # two resyncs in minute 5: one at the exchange time of the break, one during a sync (the
        # event's own time); another symbol's resync and a reconnect count nothing here
        events = [
            (T + 5 * MIN + 10_000, "resync", SYM, {"expected_pu": 1, "pu": 5, "T": T + 5 * MIN + 10_010}),
            (T + 5 * MIN + 12_000, "resync", SYM, {"during": "sync"}),
            (T + 5 * MIN + 12_000, "resync", "ZZZUSDT", {"T": T + 5 * MIN}),
            (T + 3 * MIN + 1_000, "reconnect", None, {"stream": "x"}),
        ]
        await conn.executemany(
            "INSERT INTO ingest_events (ts, collector, symbol, kind, detail) VALUES ($1, 'book-diff', $2, $3, $4::jsonb)",
            [(datetime.fromtimestamp(ts / 1000, tz=UTC), s, k, json.dumps(d)) for ts, k, s, d in events],
        )
    finally:
        await conn.close()


def q1m(dsn: str) -> dict[int, dict[str, Any]]:
    df = read_features(dsn, "1m", [SYM])
    out = {}
    for (_, bucket), row in df.iterrows():
        out[int((bucket.value // 1_000_000 - T) // MIN)] = row.to_dict()
    return out


def check_quality(dsn: str) -> None:
    b = q1m(dsn)
    assert sorted(b) == list(range(7))
    # ids: the withheld ones in the bar that holds them; a gap across minutes 3/4 counts in both
    assert [b[m]["trade_ids_missing"] for m in range(7)] == [0, 0, 3, 4, 4, 0, 0]
    # complete: no missing id and stored trades on both sides (the first and last bars have none)
    assert [bool(b[m]["trades_complete"]) for m in range(7)] == [
        False,
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    # book: every slot 1.0 (a doubled slot counts once); the disconnect's and the resync's slots
    assert b[1]["book_coverage"] == 1.0 and b[0]["book_coverage"] == 1.0
    assert b[3]["book_coverage"] == (120 - 10) / 120 and b[5]["book_coverage"] == (120 - 4) / 120
    assert [b[m]["book_resyncs"] for m in range(7)] == [0, 0, 0, 0, 0, 2, 0]
    assert (
        b[1]["mark_coverage"] == 59 / 60 and b[4]["mark_coverage"] == 54 / 60 and b[2]["mark_coverage"] == 1.0
    )
    # open interest at 10:00:30 and 10:03:20: its age at each bar's end
    assert [b[m]["oi_age_s"] for m in (0, 1, 3, 5)] == [30.0, 90.0, 40.0, 160.0]
    # quiet: seconds without a trade, less the seconds strictly inside a gap's span (unknown there)
    assert b[1]["quiet_s"] == 30.0
    assert b[2]["quiet_s"] == 60 - 27 - 7  # trades at s 138 and 146 around the hole: 139..145
    assert b[3]["quiet_s"] == 60 - 28 - 5 and b[4]["quiet_s"] == 60 - 28 - 4  # 235..243 split 5 / 4
    assert b[0]["quiet_s"] is None or np.isnan(b[0]["quiet_s"])  # nothing stored before it
    # 5m: the whole gap once per bar that meets it
    five = read_features(dsn, "5m", [SYM])
    assert list(five["trade_ids_missing"]) == [7, 0]


def check_pull(dsn: str) -> None:
    # final_only=False: finality (export/sql/finality.sql) holds back bars an unfilled gap reaches, a
    # rule of its own; this checks the quality filter alone
    kw: dict[str, Any] = dict(
        dsn=dsn, technical=False, final_only=False, now=datetime(2027, 1, 1, tzinfo=UTC)
    )
    start, end = (
        datetime.fromtimestamp(T / 1000, tz=UTC),
        datetime.fromtimestamp((T + 7 * MIN) / 1000, tz=UTC),
    )
    every = pull_features(SYM, start, end, "1m", **kw)
    assert len(every) == 7 and every.attrs["quality_dropped"] == 0
    assert every["trades_complete"].dtype == "boolean" and every["trade_ids_missing"].dtype == "Int64"
    full = pull_features(SYM, start, end, "1m", quality="complete", **kw)
    want = every[every["trades_complete"].astype(bool) & (every["book_coverage"] >= 0.9)]
    assert list(full.index) == list(want.index)
    minutes = [int((i[1].value // 1_000_000 - T) // MIN) for i in full.index]
    assert minutes == [1, 5] and full.attrs["quality_dropped"] == 5
    strict = pull_features(SYM, start, end, "1m", quality="complete", min_book_coverage=0.97, **kw)
    assert [int((i[1].value // 1_000_000 - T) // MIN) for i in strict.index] == [1]
    assert strict.attrs["quality_dropped"] == 6
    with pytest.raises(PullError, match="quality"):
        pull_features(SYM, start, end, "1m", quality="best", **kw)
    with pytest.raises(PullError, match="min_book_coverage"):
        pull_features(SYM, start, end, "1m", quality="complete", min_book_coverage=1.5, **kw)


def test_quality_columns_on_postgresql(db_url: str) -> None:
    run(write_quality_cases(db_url))
    refresh(db_url)
    assert_equal_reference(db_url, db_url, "quality postgresql")
    check_quality(db_url)
    check_pull(db_url)


@pytest.mark.pglite
def test_quality_columns_on_timescaledb_continuous_aggregates(db_url: str, pglite_db: str) -> None:
    run(write_quality_cases(db_url))
    copy_raw_rows(db_url, pglite_db)
    assert refresh_all(pglite_db, force=False).engine == "continuous_aggregates"
    assert_equal_reference(pglite_db, db_url, "quality timescaledb")
    check_quality(pglite_db)
    check_pull(pglite_db)


def test_a_gap_filled_later_clears_its_bars(db_url: str) -> None:
    """Gaps change after the stages are materialised: the bars follow at query time."""
    run(write_quality_cases(db_url))
    refresh(db_url)

    async def fill() -> None:
        conn = await asyncpg.connect(dsn=db_url)
        try:
            rows = [(i + 1, T + 2000 * i + 137, 100 + 0.01 * i, 1.0, i % 2 == 0) for i in range(70, 73)]
            await write_batch(conn, "agg_trades", SYM, trades(rows), gap_fill=True)
        finally:
            await conn.close()

    run(fill())
    refresh(db_url)
    b = q1m(db_url)
    assert b[2]["trade_ids_missing"] == 0 and bool(b[2]["trades_complete"]) and b[2]["quiet_s"] == 30.0
    assert b[3]["trade_ids_missing"] == 4
    assert_equal_reference(db_url, db_url, "quality after a fill")


def test_the_live_collectors_gap_reaches_the_bars(db_url: str, tmp_path: Path) -> None:
    """The local exchange skips aggTrade messages and REST aggTrades answers are malformed: the ids
    stay missing, recorded as open gaps by the live collector, and the bars they fall in say so."""
    faults = FaultConfig(
        ws_skip_agg_trades=0.05, rest_malformed=1.0, rest_malformed_paths=("/fapi/v1/aggTrades",)
    )
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), history_days=0, live_rate=60.0, cache_dir=tmp_path / "cache", faults=faults
    )

    async def go() -> None:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home")
            settings.point_at_exchange(ex.base_url)
            w = Writer(db_url, tmp_path / "spill")
            await w.start()
            try:
                await collect_aggtrades_live(
                    settings, db_url, ["BTCUSDT"], live_seconds=5, writer=w, batch_ms=200, stale_timeout=5
                )
            finally:
                await w.close()

    asyncio.run(go())
    refresh(db_url)
    with psycopg.connect(db_url) as conn:
        gaps = conn.execute(
            "SELECT from_id, to_id FROM agg_trade_gaps WHERE symbol = 'BTCUSDT' AND status = 'open'"
        ).fetchall()
        spans = conn.execute(
            "SELECT ids, t0, t1 FROM microstructure_gap_spans() WHERE symbol = 'BTCUSDT'"
        ).fetchall()
    assert gaps, "the skipped ids were not recorded as open gaps"
    df = read_features(db_url, "1m", ["BTCUSDT"])
    for bucket, row in df.loc["BTCUSDT"].iterrows():
        end = row["bucket_end"]
        want = sum(n for n, t0, t1 in spans if t0 < end and t1 >= bucket)
        assert row["trade_ids_missing"] == want
        assert not row["trades_complete"]
    assert df["trade_ids_missing"].sum() >= sum(t - f + 1 for f, t in gaps)
    assert_equal_reference(db_url, db_url, "quality live")
