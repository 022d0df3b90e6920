"""pull_features: the database and the exported tree give equal frames, final bars only by default,
indicators equal TA-Lib called directly and do not depend on `start`, no value depends on a later
bar; warm-up reported; walk-forward folds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import talib
from ex_helpers import HOUR_MS, SYMBOLS, T0, run, write_hours, write_late

from microstructure.cli import main
from microstructure.export import pull_features, walk_forward_folds
from microstructure.export.exporter import export_once
from microstructure.export.indicators import INDICATOR_COLUMNS, WARMUP_BARS, WARMUP_NEEDED, lookback_bars
from microstructure.export.pull import WarmupError, WarmupWarning
from microstructure.features_sql.stages import FEATURE_COLUMNS


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


START, END = at(T0 + 5 * HOUR_MS + 20 * 60_000), at(T0 + 6 * HOUR_MS)  # the last 40 minutes


pytestmark = pytest.mark.filterwarnings("ignore::microstructure.export.pull.WarmupWarning")


@pytest.fixture
def data(db_url: str, tmp_path: Path) -> tuple[str, Path]:
    run(write_hours(db_url))
    out = tmp_path / "data"
    export_once(db_url, out, types=["features_1m", "features_5m", "features_15m"])
    return db_url, out


def test_database_and_parquet_pulls_are_equal(data: tuple[str, Path]) -> None:
    dsn, out = data
    for tf in ("1m", "5m", "15m"):
        a = pull_features(list(SYMBOLS), START - timedelta(hours=2), END, tf, dsn=dsn)
        b = pull_features(list(SYMBOLS), START - timedelta(hours=2), END, tf, source="parquet", data_dir=out)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.columns) == ["bucket_end", *FEATURE_COLUMNS, "final", "available_at", *INDICATOR_COLUMNS]
    assert a.index.names == ["symbol", "bucket"] and len(a.columns) >= 70
    assert (a["available_at"] == a["bucket_end"] + pd.Timedelta(seconds=10)).all() and a["final"].all()


def test_only_final_bars_unless_asked(data: tuple[str, Path]) -> None:
    dsn, _ = data
    now = at(T0 + 3 * HOUR_MS + 30 * 60_000 + 5_000)  # 23:30:05: the 23:29 bar closed 5 s ago
    final = pull_features(SYMBOLS[0], at(T0), END, "1m", dsn=dsn, now=now, technical=False)
    last = final.index.get_level_values("bucket").max()
    assert last == at(T0 + 3 * HOUR_MS + 28 * 60_000)  # 23:29 ends at 23:30:00, + 10 s lateness > now
    assert (final["bucket_end"] + pd.Timedelta(seconds=10) <= pd.Timestamp(now)).all()
    everything = pull_features(
        SYMBOLS[0], at(T0), END, "1m", dsn=dsn, now=now, technical=False, final_only=False
    )
    assert everything.index.get_level_values("bucket").max() > last


def test_indicators_equal_talib_on_the_anchor_window(data: tuple[str, Path]) -> None:
    dsn, _ = data
    with pytest.warns(WarmupWarning, match=r"AAAUSDT 320\) < 350 needed at 1m"):
        df = pull_features(SYMBOLS[0], START, END, "1m", dsn=dsn)
    assert df.attrs["warmup_bars"] == WARMUP_BARS == max(WARMUP_NEEDED.values()) + 5
    assert lookback_bars() < WARMUP_BARS and df.attrs["warmup_bars_read"] == {SYMBOLS[0]: 320}
    assert df.attrs["cold_indicators"] == {SYMBOLS[0]: ["ema_50"]}  # 345 needed, 320 there
    assert df.index.get_level_values("bucket").min() == pd.Timestamp(START)
    # START's anchor window (the day before START's day, then its day) holds every stored bar: TA-Lib on them
    hist = pull_features(SYMBOLS[0], at(T0), END, "1m", dsn=dsn, technical=False)
    c, h, lo, v = (hist[k].to_numpy(float) for k in ("close", "high", "low", "volume"))
    direct = {
        "rsi_14": talib.RSI(c, 14), "ema_50": talib.EMA(c, 50), "sma_21": talib.SMA(c, 21),
        "atr_14": talib.ATR(h, lo, c, 14), "adx_14": talib.ADX(h, lo, c, 14),
        "macd": talib.MACD(c, 12, 26, 9)[0], "cci_20": talib.CCI(h, lo, c, 20), "mfi_14": talib.MFI(h, lo, c, v, 14),
        "bb_upper": talib.BBANDS(c, 20, 2, 2, 0)[0], "stoch_k": talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)[0],
        "willr_14": talib.WILLR(h, lo, c, 14), "roc_10": talib.ROC(c, 10),
    }  # fmt: skip
    n = len(df)
    for name, values in direct.items():
        np.testing.assert_array_equal(df[name].to_numpy(float), values[-n:], err_msg=name)
    assert not df[list(INDICATOR_COLUMNS)].isna().any().any()
    lr = np.log(c[1:] / c[:-1])
    np.testing.assert_allclose(df["log_return"].to_numpy(float), lr[-n:], rtol=1e-12)
    rv = np.sqrt(pd.Series(lr**2).rolling(20).sum().to_numpy())
    np.testing.assert_allclose(df["realized_vol_20"].to_numpy(float), rv[-n:], rtol=1e-12)
    # OBV restarts at 00:00 UTC: the day's sum of sign(close - previous close) * volume
    t = hist.index.get_level_values("bucket")
    step = pd.Series(np.r_[0.0, np.sign(np.diff(c)) * v[1:]], index=t)
    day = step[t >= pd.Timestamp(START).floor("D")].cumsum()
    np.testing.assert_allclose(df["obv"].to_numpy(float), day.to_numpy()[-n:], rtol=1e-12)


def test_every_indicator_is_independent_of_start(data: tuple[str, Path]) -> None:
    dsn, out = data
    for tf, starts in (("1m", (at(T0), START - timedelta(minutes=97), START)), ("5m", (at(T0), START))):
        frames = [pull_features(list(SYMBOLS), s, END, tf, dsn=dsn) for s in starts] + [
            pull_features(list(SYMBOLS), s, END, tf, source="parquet", data_dir=out) for s in starts
        ]
        shared = frames[-1].index
        assert len(shared) > 10
        for f in frames:
            pd.testing.assert_frame_equal(f.loc[shared], frames[-1], check_exact=True)
        assert frames[0]["obv"].notna().all()


def test_a_pull_without_history_warns_and_strict_raises(
    data: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, out = data
    with pytest.warns(WarmupWarning, match=r"AAAUSDT 0, BBBUSDT 0\) < 350 needed at 15m"):
        df = pull_features(list(SYMBOLS), at(T0), END, "15m", dsn=dsn)
    assert df.attrs["warmup_bars_read"] == {"AAAUSDT": 0, "BBBUSDT": 0}
    assert set(df.attrs["cold_indicators"]["AAAUSDT"]) == set(INDICATOR_COLUMNS)
    with pytest.raises(WarmupError, match="bars read before start"):
        pull_features(list(SYMBOLS), at(T0), END, "15m", dsn=dsn, strict_warmup=True)
    argv = ["--database-url", dsn, "features", "pull", "--symbol", SYMBOLS[0], "--timeframe", "15m",
            "--start", at(T0 + HOUR_MS).isoformat(), "--end", END.isoformat(), "--out", str(out / "x.parquet")]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "warning: indicators not warm: bars read before start (AAAUSDT 4) < 350 needed at 15m" in said
    assert "bars read before --start for the indicators: AAAUSDT 4 (350 needed)" in said
    assert main([*argv, "--strict-warmup"]) == 2
    assert "--strict-warmup: indicators not warm" in capsys.readouterr().err


def test_a_later_bar_changes_nothing_available_before_it(data: tuple[str, Path]) -> None:
    dsn, _ = data
    before = pull_features(SYMBOLS[0], START, END, "1m", dsn=dsn)
    t_late = T0 + 5 * HOUR_MS + 45 * 60_000 + 30_000  # a trade in the 01:45 bar
    late = pa.table({
        "agg_id": pa.array([10_000_000], pa.int64()), "ts_ms": pa.array([t_late], pa.int64()),
        "price": [250.0], "quantity": [500.0], "first_trade_id": pa.array([20_000_000], pa.int64()),
        "last_trade_id": pa.array([20_000_000], pa.int64()), "is_buyer_maker": [False],
    })  # fmt: skip
    run(write_late(dsn, SYMBOLS[0], late))
    after = pull_features(SYMBOLS[0], START, END, "1m", dsn=dsn)
    bar = pd.Timestamp(at(t_late // 60_000 * 60_000))
    earlier = before["available_at"] <= bar  # available by the time the changed bar began
    pd.testing.assert_frame_equal(before[earlier], after[earlier.to_numpy()])
    assert not after.loc[(SYMBOLS[0], bar)].equals(before.loc[(SYMBOLS[0], bar)])
    assert after.loc[(SYMBOLS[0], bar), "high"] == 250.0


def test_walk_forward_folds_keep_an_embargo(data: tuple[str, Path]) -> None:
    dsn, _ = data
    df = pull_features(SYMBOLS[0], at(T0), END, "1m", dsn=dsn, technical=False)
    folds = list(
        walk_forward_folds(df, train="2h", test="30min", step="30min", embargo="5min", horizon="5min")
    )
    assert len(folds) >= 5
    times = df.index.get_level_values("bucket")
    for f in folds:
        train_t, test_t = times[f.train], times[f.test]
        assert train_t.max() + pd.Timedelta("5min") < test_t.min()  # no training label reaches the test range
        assert test_t.min() >= f.test_range[0] and test_t.max() < f.test_range[1]
    assert folds[1].test_range[0] - folds[0].test_range[0] == pd.Timedelta("30min")
    with pytest.raises(ValueError, match="embargo"):
        list(walk_forward_folds(df, train="1h", test="10min", embargo="1min", horizon="5min"))


def test_features_pull_cli_writes_the_frame(
    data: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, out = data
    target = tmp_path / "bars.parquet"
    argv = ["--database-url", dsn, "features", "pull", "--symbol", SYMBOLS[0], "--timeframe", "5m",
            "--start", START.isoformat(), "--end", END.isoformat(), "--source", "parquet", "--data-dir", str(out),
            "--out", str(target)]  # fmt: skip
    assert main(argv) == 0
    assert (
        f"bars read before --start for the indicators: {SYMBOLS[0]} 64 ({WARMUP_BARS} needed)"
        in capsys.readouterr().out
    )
    got = pd.read_parquet(target)
    want = pull_features(SYMBOLS[0], START, END, "5m", dsn=dsn)
    pd.testing.assert_frame_equal(got, want, check_freq=False)
    assert main([*argv[:-2], "--out", str(tmp_path / "no" / "x.parquet")]) == 2
