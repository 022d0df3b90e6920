"""The book-depth band features (docs/FEATURES.md "Book depth bands") on hand-made bookDepth rows, on
embedded PostgreSQL (refresher) and PGlite TimescaleDB (continuous aggregates): every column against
the pandas reference (reference.depth_bars, from the raw band rows), plus the rules by value."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest
from fx_bands import DAY2, PARTIAL, band_rows, write_band_cases
from fx_cases import MIDNIGHT, MIN, OTHER, SYM, T0, write_cases
from fx_helpers import copy_raw_rows, run
from test_features_cases import assert_equal_reference, bar, refresh, refresh_all

from microstructure.features_sql.stages import BOOK_DEPTH_COLUMNS
from microstructure.ingest.records import BOOK_DEPTH_BANDS
from microstructure.ingest.sink.reconcile import reload_archive_day

S = 1000


def _depth(rows: Any, t_lo: int, t_hi: int, pct: float, col: str = "depth") -> list[float]:
    """The band's values of the rows with ts in [t_lo, t_hi)."""
    d = rows.to_pandas()
    sel = d[(d["ts"] >= t_lo) & (d["ts"] < t_hi) & (d["percentage"] == pct)]
    return sel[col].tolist()


def check_band_rules(dsn: str, written: dict[str, Any]) -> None:
    day1 = written["day1"]
    b = lambda ms, s=SYM, tf="1m": bar(dsn, tf, s, ms)  # noqa: E731
    # bars with other rows but no bookDepth row: every band column NULL
    for ms in (T0 + 2 * MIN, T0 + 3 * MIN):
        assert all(b(ms)[c] is None for c in BOOK_DEPTH_COLUMNS), ms
    assert b(T0 + 8 * MIN) is None and b(T0 + 9 * MIN) is None  # no row of any source: no bar
    # the mean over the bar's snapshots, per side; imbalances of those means
    first = b(T0)
    bid, ask = np.mean(_depth(day1, T0, T0 + MIN, -1.0)), np.mean(_depth(day1, T0, T0 + MIN, 1.0))
    assert len(_depth(day1, T0, T0 + MIN, -1.0)) == 2
    assert first["bid_depth_1pct"] == pytest.approx(bid, rel=1e-12)
    assert first["ask_depth_1pct"] == pytest.approx(ask, rel=1e-12)
    assert first["depth_imbalance_1pct"] == pytest.approx((bid - ask) / (bid + ask), rel=1e-12)
    bn, an = (np.mean(_depth(day1, T0, T0 + MIN, p, "notional")) for p in (-5.0, 5.0))
    assert first["notional_imbalance_5pct"] == pytest.approx((bn - an) / (bn + an), rel=1e-12)
    # the old-format day has no 0.2 band: NULL, never guessed; the 2026 day has it
    assert all(first[c] is None for c in BOOK_DEPTH_COLUMNS if "0p2" in c)
    night = b(MIDNIGHT)
    assert night["bid_depth_0p2pct"] == pytest.approx(
        np.mean(_depth(written["day2"], MIDNIGHT, MIDNIGHT + MIN, -0.2))
    )
    assert night["depth_imbalance_0p2pct"] is not None and night["notional_imbalance_0p2pct"] is not None
    # the bands alone make a bar (23:51: no trade, no live book there)
    quiet = b(T0 + MIN)
    assert quiet["trade_count"] is None and quiet["imbalance_5"] is None and quiet["snapshot_count"] is None
    assert quiet["ask_depth_2pct"] == pytest.approx(_depth(day1, T0 + MIN, T0 + 2 * MIN, 2.0)[0], rel=1e-12)
    # a snapshot without its -3 row: the bar's -3 mean is over the snapshots that have it
    partial = b(T0 + 6 * MIN)
    assert _depth(day1, PARTIAL, PARTIAL + 1, -3.0) == []
    assert partial["bid_depth_3pct"] == pytest.approx(_depth(day1, T0 + 6 * MIN, PARTIAL, -3.0)[0], rel=1e-12)
    # the row at exactly 23:54:00 belongs to 23:54
    assert (
        len(_depth(day1, T0 + 4 * MIN, T0 + 5 * MIN, 4.0)) == 2
        and b(T0 + 4 * MIN)["bid_depth_4pct"] is not None
    )
    # both sides 0: the imbalance is NULL, the depths 0
    zero = b(T0, OTHER)
    assert (zero["bid_depth_1pct"], zero["ask_depth_1pct"], zero["depth_imbalance_1pct"]) == (0.0, 0.0, None)
    assert zero["notional_imbalance_1pct"] is None and zero["depth_imbalance_2pct"] is not None
    # 15m: the mean over every snapshot of the quarter hour (the reference checks all bars this way)
    q = bar(dsn, "15m", SYM, T0 - 5 * MIN)
    assert q["bid_depth_5pct"] == pytest.approx(
        np.mean(_depth(day1, T0 - 5 * MIN, MIDNIGHT, -5.0)), rel=1e-12
    )
    assert q["bid_depth_0p2pct"] is None


def test_band_features_on_postgresql(db_url: str) -> None:
    run(write_cases(db_url))
    written = run(write_band_cases(db_url))
    refresh(db_url)
    assert_equal_reference(db_url, db_url, "bands postgresql")
    check_band_rules(db_url, written)


@pytest.mark.pglite
def test_band_features_on_timescaledb_continuous_aggregates(db_url: str, pglite_db: str) -> None:
    run(write_cases(db_url))
    written = run(write_band_cases(db_url))
    assert copy_raw_rows(db_url, pglite_db)["book_depth_bands"] == sum(t.num_rows for t in written.values())
    refresh_all(pglite_db, force=False)
    assert_equal_reference(pglite_db, db_url, "bands timescaledb")
    check_band_rules(pglite_db, written)


def _reload_day2(dsn: str, rows: Any) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            day = datetime.fromtimestamp(MIDNIGHT / 1000, tz=UTC).date()
            await reload_archive_day(conn, "bookDepth", SYM, day, rows, BOOK_DEPTH_BANDS, "1" * 64)
        finally:
            await conn.close()

    run(go())


def test_a_reloaded_bookdepth_day_is_refreshed(db_url: str) -> None:
    """A day the reconciler loads again (a re-upload, or the archive of a live day once published)
    logs the whole day for the features: the next refresh re-materialises its bars."""
    run(write_cases(db_url))
    run(write_band_cases(db_url))
    refresh(db_url)
    before = bar(db_url, "1m", SYM, MIDNIGHT)["bid_depth_1pct"]
    rows = band_rows(DAY2[:3], (-1.0, 1.0), np.random.default_rng(99), SYM)  # the new file: 1 % bands only
    _reload_day2(db_url, rows)
    with psycopg.connect(db_url) as conn:
        logged = conn.execute(
            "SELECT lo, hi FROM raw_invalidations WHERE table_name = 'book_depth_bands' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert logged[0] == datetime.fromtimestamp(MIDNIGHT / 1000, tz=UTC)
    assert (logged[1] - logged[0]).total_seconds() == pytest.approx(86_400 - 0.001)
    report = refresh(db_url)
    assert report.windows >= 1 and report.stages["book_depth_1m"] > 0
    after = bar(db_url, "1m", SYM, MIDNIGHT)
    assert after["bid_depth_1pct"] != before and after["bid_depth_2pct"] is None
    assert bar(db_url, "1m", SYM, MIDNIGHT + 3 * MIN) is None  # not in the new file, no other row there
    assert_equal_reference(db_url, db_url, "bands reloaded")
