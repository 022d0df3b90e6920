"""The pull a backtest can trust: a bar is final by its data (a collection stopped inside a bar never
makes it final, an unfilled trade-id gap holds its bars back), available_at >= end + lateness; grid
and wide shapes; forward_returns and walk-forward folds without leakage; the database found as the
CLI finds it when no dsn is given."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest
from ex_helpers import run, trade_table
from fx_cases import marks, snapshots

from microstructure.db import migrate
from microstructure.db.embedded import EmbeddedPostgres
from microstructure.export import forward_returns, pull_features, walk_forward_folds
from microstructure.export.exporter import export_once
from microstructure.features_sql.refresher import refresh_once, refresh_pending
from microstructure.ingest.collectors.book_values import BookValues
from microstructure.ingest.sink.writer import write_batch
from microstructure.status import collect_status

pytestmark = pytest.mark.filterwarnings("ignore::microstructure.export.pull.WarmupWarning")

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
MS0 = int(T0.timestamp() * 1000)
STOP = MS0 + 42 * 60_000 + 12_000  # 12:42:12: the live collection of STOPPED stops
RESTART = MS0 + 90 * 60_000  # 13:30: and runs again until 14:00
END_MS = MS0 + 2 * 3_600_000
STOPPED, STEADY = "CCCUSDT", "DDDUSDT"
NOW = T0 + timedelta(hours=3)
GAP = (5001, 5010)  # STEADY's trade ids never stored (an unfilled gap)


def _spans(sym: str) -> list[tuple[int, int]]:
    return [(MS0, STOP), (RESTART, END_MS)] if sym == STOPPED else [(MS0, END_MS)]


async def _write(dsn: str) -> None:
    rng = np.random.default_rng(5)
    conn = await asyncpg.connect(dsn)
    try:
        for k, sym in enumerate((STOPPED, STEADY)):
            ts = np.concatenate([np.arange(a, b, 1_000, dtype=np.int64) for a, b in _spans(sym)])
            ids = np.arange(1, len(ts) + 1, dtype=np.int64)
            if sym == STEADY:
                ids = np.where(ids >= GAP[0], ids + GAP[1] - GAP[0] + 1, ids)  # ids 5001..5010 missing
            await write_batch(conn, "agg_trades", sym, trade_table(rng, ids, ts, 100.0 * (k + 1)))
            values = BookValues()
            rows = []
            for j, t in enumerate(ts.tolist()):
                mid = 100.0 * (k + 1) + 0.01 * (j % 50)
                bids = [[round(mid - 0.05 - 0.1 * i, 2), 5.0 + i] for i in range(20)]
                asks = [[round(mid + 0.05 + 0.1 * i, 2), 6.0 + i] for i in range(20)]
                rows.append((t + 300, 10 * j + 5, bids, asks))
            await write_batch(conn, "book_snapshots", sym, snapshots(rows, values, sym))
            m = [(t + 500, 100.0 * (k + 1), 100.0 * (k + 1), 0.0001) for t in ts.tolist()]
            await write_batch(conn, "mark_prices", sym, marks(m))
        # the writer recorded the id gap itself
        assert await conn.fetch("SELECT from_id, to_id, status FROM agg_trade_gaps") == [(*GAP, "open")]
        await refresh_pending(conn)
    finally:
        await conn.close()


@pytest.fixture
def data(db_url: str) -> str:
    run(_write(db_url))
    return db_url


def _bar(minute: int) -> pd.Timestamp:
    return pd.Timestamp(T0 + timedelta(minutes=minute))


def test_a_bar_the_collection_stopped_inside_is_never_final(data: str, tmp_path: Path) -> None:
    every = pull_features(STOPPED, T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW, final_only=False)
    final = every["final"].droplevel("symbol")
    assert final[_bar(41)] and not final[_bar(42)]  # stopped at 12:42:12, ran again from 13:30
    assert final[_bar(90)] and final[_bar(118)] and not final[_bar(119)]  # the newest trade 13:59:59
    assert every["available_at"].isna().sum() == 2
    got = every[every["final"]]
    assert (got["available_at"] >= got["bucket_end"] + pd.Timedelta(seconds=10)).all()
    assert (got["available_at"] == got["bucket_end"] + pd.Timedelta(seconds=10)).all()
    q = pull_features(STOPPED, T0, T0 + timedelta(hours=2), "15m", dsn=data, now=NOW, final_only=False)
    assert not q.loc[(STOPPED, _bar(30)), "final"] and q.loc[(STOPPED, _bar(15)), "final"]
    default = pull_features(STOPPED, T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW)
    assert _bar(42) not in default.index.get_level_values("bucket") and len(default) == 42 + 29
    # the exported tree says the same
    out = tmp_path / "tree"
    export_once(data, out, types=["features_1m"], now=NOW)
    pq_every = pull_features(
        STOPPED, T0, T0 + timedelta(hours=2), "1m", source="parquet", data_dir=out, now=NOW, final_only=False
    )
    pd.testing.assert_frame_equal(pq_every, every, check_exact=True)


def test_an_unfilled_trade_gap_holds_its_bars_back(data: str) -> None:
    df = pull_features(STEADY, T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW, final_only=False)
    final = df["final"].droplevel("symbol")
    # ids 5000 and 5011 are the trades at 13:23:19 and 13:23:20: the gap lies in the 13:23 bar
    assert not final[_bar(83)] and final[_bar(82)] and final[_bar(84)]

    async def fill() -> None:
        conn = await asyncpg.connect(data)
        await conn.execute("UPDATE agg_trade_gaps SET status = 'filled' WHERE symbol = $1", STEADY)
        await conn.close()

    run(fill())
    again = pull_features(STEADY, T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW, final_only=False)
    assert again["final"].droplevel("symbol")[_bar(83)]


def test_grid_and_wide_shapes(data: str) -> None:
    syms = [STOPPED, STEADY]
    g = pull_features(syms, T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW, grid=True)
    assert g.index.names == ["symbol", "bucket"] and len(g) == 2 * 120
    assert list(g.columns[:2]) == ["bucket_end", "present"]
    p = g["present"]
    assert p[STOPPED].sum() == 42 + 29 and not p[STOPPED][_bar(42) : _bar(89)].any()
    assert p[STEADY].sum() == 118  # 13:23 (the gap) and 13:59 (the newest) are not final
    assert g.loc[(STOPPED, _bar(60)), ["close", "volume"]].isna().all()
    assert (g["bucket_end"] - g.index.get_level_values("bucket") == pd.Timedelta(minutes=1)).all()
    w = pull_features(syms, T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW, wide=True)
    assert w.shape == (120, 2 * len(g.columns)) and w.columns.names == ["symbol", "column"]
    assert list(w.columns.get_level_values("symbol").unique()) == syms
    pd.testing.assert_series_equal(w[STEADY]["close"], g.loc[STEADY, "close"], check_names=False)
    assert w.index.name == "bucket" and w.index.is_monotonic_increasing


def test_forward_returns_and_folds_do_not_leak(data: str) -> None:
    g = pull_features([STOPPED, STEADY], T0, T0 + timedelta(hours=2), "1m", dsn=data, now=NOW, grid=True)
    y = forward_returns(g, horizon="15min")
    assert y.attrs["horizon"] == pd.Timedelta("15min") and y.name == "fwd_return_15min"
    c = g.loc[STOPPED, "close"]
    # an independent computation: the close 15 bars on, NaN if any bar on the way is missing
    want = []
    for i in range(len(c)):
        way = c.iloc[i + 1 : i + 16]
        ok = len(way) == 15 and way.notna().all() and not np.isnan(c.iloc[i])
        want.append(way.iloc[-1] / c.iloc[i] - 1 if ok else np.nan)
    np.testing.assert_array_equal(y.loc[STOPPED].to_numpy(), np.array(want))
    assert not np.isnan(y.loc[STOPPED][_bar(26)]) and np.isnan(y.loc[STOPPED][_bar(27)])  # 12:42 not final
    assert y.loc[STOPPED].iloc[-16:].isna().all()  # leaves the data (or the last, non-final bar)
    folds = list(walk_forward_folds(g, train="30min", test="15min", label=y))
    assert len(folds) >= 4
    times = g.index.get_level_values("bucket")
    for f in folds:
        assert f.test_range[0] - f.train_range[1] == pd.Timedelta("15min")  # the embargo = the horizon
        # a training label ends with the bar t + 15min, which ends before the test range starts
        assert (times[f.train] + pd.Timedelta("16min") <= f.test_range[0]).all()
        # and no training label changes when every test bar is changed
        moved = g.copy()
        moved.loc[moved.index[f.test], "close"] *= 2
        y2 = forward_returns(moved, horizon="15min")
        pd.testing.assert_series_equal(y.iloc[f.train], y2.iloc[f.train])
    r = repr(folds[0])
    assert r.startswith("Fold(train=") and "bars [2026-12-05 12:00 .. 2026-12-05 12:30)" in r and len(r) < 120
    with pytest.raises(ValueError, match="shorter than the label horizon"):
        list(walk_forward_folds(g, train="30min", test="15min", label=y, embargo="5min"))
    with pytest.raises(ValueError, match="grid"):
        forward_returns(g[g["present"]], horizon="15min")


def test_no_dsn_finds_the_embedded_database_as_the_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    server = EmbeddedPostgres(home)
    try:
        dsn = server.ensure_running().dsn()
        migrate.upgrade(dsn)
        run(_write(dsn))
        monkeypatch.delenv("MICROSTRUCTURE_DATABASE_URL", raising=False)
        monkeypatch.setenv("MICROSTRUCTURE_HOME", str(home))
        got = pull_features(STEADY, T0, T0 + timedelta(hours=1), now=NOW)
        want = pull_features(STEADY, T0, T0 + timedelta(hours=1), now=NOW, dsn=dsn)
        assert len(got) == 60
        pd.testing.assert_frame_equal(got, want)
        report = export_once(None, tmp_path / "tree", types=["features_1m"], now=NOW)  # the export too
        assert report.files_written == 2 * 2  # two symbols, two hours
        assert collect_status().symbols and asyncio.run(refresh_once()) is not None
    finally:
        server.stop()


def test_the_demo_pull_header_has_both_dates() -> None:
    from microstructure.demo import pull_span

    assert pull_span(T0, T0 + timedelta(days=2)) == "2026-12-05 12:00 .. 2026-12-07 12:00 UTC"
