"""Issue 27's acceptance over history: `collect all --mode historical --days 3` against the local
exchange with every archive type published, then `features refresh`: every 1m bar of the three days
has each column of HISTORY_COLUMNS non-NULL, and the values follow their rule read here from the raw
rows (pandas); today's bars, which no archive covers yet, carry today's open interest. The same
raw rows on TimescaleDB (continuous aggregates, PGlite) give the same values.

HISTORY_COLUMNS: open interest, settled funding, mark / index / premium (the 1m klines) and the
bookDepth band columns (the 2026 files, with the +-0.2 % band)."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest
from ib_helpers import day_ms, exchange_config, fetch_all, ms

from microstructure.cli import main
from microstructure.db import migrate
from microstructure.exchange import ExchangeThread
from microstructure.features_sql.refresher import refresh_range

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
from fx_helpers import copy_raw_rows  # the feature tests' loader of raw rows into PGlite

# the values of the market (klines) and band columns are held against pandas in
# test_ib_collect_all_historical.py; here: every bar has them, on both engines
HISTORY_COLUMNS = [
    "open_interest", "funding_rate", "mark_price", "index_price", "spot_premium_pct",
    *(f"{kind}_{band}pct" for kind in ("depth_imbalance", "notional_imbalance", "bid_depth", "ask_depth")
      for band in ("0p2", 1, 2, 3, 4, 5)),
]  # fmt: skip

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DAYS = ("2024-03-03", "2024-03-04", "2024-03-05")
TODAY = "2024-03-06"
CLOCK = datetime(2024, 3, 6, 1, 30, 5, tzinfo=UTC)
MINUTE = 60_000


def _frame(db_url: str, sql: str, *args: object) -> pd.DataFrame:
    return pd.DataFrame([dict(r) for r in asyncio.run(fetch_all(db_url, sql, *args))])


def _last_before(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The value of the last observation with time < each of `at` (NaN when none); times sorted."""
    i = np.searchsorted(times, at, side="left") - 1
    return np.where(i >= 0, values[np.maximum(i, 0)], np.nan)


def _history(url: str) -> pd.DataFrame:
    cols = ", ".join(HISTORY_COLUMNS)
    return _frame(url, f"SELECT symbol, bucket, {cols} FROM features_1m ORDER BY symbol, bucket")


async def _refresh_one_connection(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await refresh_range(conn, force=False)
    finally:
        await conn.close()


@pytest.mark.pglite
def test_history_is_complete_after_collect_all_historical(
    db_url, pglite_url, ib_cache, tmp_path, capsys
) -> None:
    began = time.monotonic()
    cfg = exchange_config(
        ib_cache,
        history_days=4,  # the day before the range too: a settlement at its first midnight
        live_rate=None,
        trades_per_day=2_000,
        clock_start=CLOCK,
    )
    cfg.formats.book_depth_bands = 12  # the 2026 bookDepth files: +-0.2 % besides 1..5 %
    base = ["--database-url", db_url, "--home", str(tmp_path)]
    with ExchangeThread(cfg) as ex:
        rc = main([*base, "collect", "all", "--symbol", ",".join(SYMBOLS), "--mode", "historical",
                   "--days", "3", "--exchange-url", ex.base_url])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        assert main([*base, "features", "refresh"]) == 0
    capsys.readouterr()

    t0, t1 = day_ms(DAYS[0]), day_ms(TODAY)
    feats = _history(db_url)
    feats["t"] = [ms(b) for b in feats["bucket"]]
    oi = _frame(db_url, "SELECT symbol, ts, open_interest FROM open_interest ORDER BY symbol, ts")
    funding = _frame(db_url, "SELECT symbol, funding_ts, funding_rate FROM funding_rates ORDER BY 1, 2")
    trades = _frame(
        db_url,
        "SELECT symbol, count(DISTINCT date_trunc('minute', ts)) AS n FROM agg_trades "
        "WHERE ts >= to_timestamp($1 / 1000.0) AND ts < to_timestamp($2 / 1000.0) GROUP BY 1",
        t0,
        t1,
    )
    for sym in SYMBOLS:
        f = feats[feats["symbol"] == sym]
        hist = f[(f["t"] >= t0) & (f["t"] < t1)]
        # every minute with a trade is a bar (and the metrics' 5-minute steps are, too)
        assert len(hist) >= int(trades.loc[trades["symbol"] == sym, "n"].iloc[0]) > 1000
        for col in HISTORY_COLUMNS:
            nulls = hist.loc[hist[col].isna(), "bucket"]
            assert nulls.empty, (
                f"{sym} {col}: NULL in {len(nulls)} of {len(hist)} bars, first {nulls.iloc[:3].tolist()}"
            )
        bar = hist["t"].to_numpy()
        # open interest: the last observation before the bar's end (metrics archive, 5-minute)
        o = oi[oi["symbol"] == sym]
        o_t = np.array([ms(t) for t in o["ts"]])
        want = _last_before(o_t, o["open_interest"].to_numpy(float), bar + MINUTE)
        assert np.array_equal(hist["open_interest"].to_numpy(float), want)
        # funding: the last settled rate before the bar's end
        fr = funding[funding["symbol"] == sym]
        fr_t = np.array([ms(t) for t in fr["funding_ts"]])
        want = _last_before(fr_t, fr["funding_rate"].to_numpy(float), bar + MINUTE)
        assert np.array_equal(hist["funding_rate"].to_numpy(float), want)
        # today (no archive yet): a bar at every 5-minute step since midnight, each with today's
        # open interest (openInterestHist), the last before the bar's end
        today = f[f["t"] >= t1]
        steps = list(range(t1, ms(CLOCK) + 1, 300_000))
        assert set(steps) <= set(today["t"])
        assert today["open_interest"].notna().all()
        assert np.array_equal(
            today["open_interest"].to_numpy(float),
            _last_before(o_t, o["open_interest"].to_numpy(float), today["t"].to_numpy() + MINUTE),
        )
        assert o_t[o_t >= t1].tolist() == steps

    # TimescaleDB: the same raw rows, the same bars and values
    migrate.downgrade(pglite_url)
    migrate.upgrade(pglite_url)
    try:
        copy_raw_rows(db_url, pglite_url)
        asyncio.run(_refresh_one_connection(pglite_url))  # PGlite serves one connection at a time
        pd.testing.assert_frame_equal(_history(pglite_url), feats.drop(columns="t"))
    finally:
        migrate.downgrade(pglite_url)
    assert time.monotonic() - began < 60
