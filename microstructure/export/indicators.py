"""Technical indicators on a symbol's bars (TA-Lib), and how much history each needs to be warm.

Computed on the bars that have trades (OHLCV present), in time order; bars without trades get NaN.
Every indicator at a bar uses that bar and earlier ones only (TA-Lib is causal), so adding later bars
changes nothing before them.

| column | TA-Lib / formula | parameters | warm-up bars |
| --- | --- | --- | --- |
| rsi_14 | RSI | 14 | 14 (+ smoothing, see WARMUP_BARS) |
| macd, macd_signal, macd_hist | MACD | 12, 26, 9 | 33 |
| atr_14, natr_14 | ATR, NATR | 14 | 14 |
| bb_upper, bb_middle, bb_lower | BBANDS | 20, 2, 2 (SMA) | 19 |
| bb_pct_b, bb_width | (close - lower) / (upper - lower), (upper - lower) / middle | from BBANDS | 19 |
| ema_9, ema_21, ema_50 | EMA | 9, 21, 50 | 8, 20, 49 |
| sma_9, sma_21, sma_50 | SMA | 9, 21, 50 | 8, 20, 49 |
| adx_14 | ADX | 14 | 27 |
| stoch_k, stoch_d | STOCH | 14, 3 (SMA), 3 (SMA) | 17 |
| willr_14 | WILLR | 14 | 13 |
| cci_20 | CCI | 20 | 19 |
| mfi_14 | MFI | 14 | 14 |
| obv | OBV | | 0 |
| roc_10 | ROC | 10 | 10 |
| log_return | ln(close / previous close) | | 1 |
| realized_vol_20 | sqrt(sum of the last 20 squared log returns) | 20 | 20 |

EMA-based indicators (EMA, MACD, RSI, ATR, ADX) start from a seed and converge: TA-Lib's lookback is
when a value first exists, not when it stops depending on where the history began. The feature pull
reads WARMUP_BARS bars before the first bar it returns (over 5 times the longest EMA) so the first
returned values agree with a longer history to well under 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INDICATOR_COLUMNS: tuple[str, ...] = (
    "rsi_14", "macd", "macd_signal", "macd_hist", "atr_14", "natr_14", "bb_upper", "bb_middle", "bb_lower",
    "bb_pct_b", "bb_width", "ema_9", "ema_21", "ema_50", "sma_9", "sma_21", "sma_50", "adx_14", "stoch_k",
    "stoch_d", "willr_14", "cci_20", "mfi_14", "obv", "roc_10", "log_return", "realized_vol_20",
)  # fmt: skip
WARMUP_BARS = 300


def lookback_bars() -> int:
    """The longest TA-Lib lookback among the indicators (bars before the first defined value)."""
    import talib.abstract as ta

    specs = {
        "RSI": {"timeperiod": 14}, "MACD": {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9},
        "ATR": {"timeperiod": 14}, "BBANDS": {"timeperiod": 20}, "EMA": {"timeperiod": 50},
        "ADX": {"timeperiod": 14}, "STOCH": {"fastk_period": 14, "slowk_period": 3, "slowd_period": 3},
        "CCI": {"timeperiod": 20}, "MFI": {"timeperiod": 14}, "ROC": {"timeperiod": 10},
    }  # fmt: skip
    out = 0
    for name, params in specs.items():
        f = ta.Function(name)
        f.parameters = params
        out = max(out, int(f.lookback))
    return out


def indicators(bars: pd.DataFrame) -> pd.DataFrame:
    """INDICATOR_COLUMNS for one symbol's bars (rows in time order, columns open/high/low/close/volume);
    same index as `bars`."""
    import talib

    out = pd.DataFrame(index=bars.index, columns=list(INDICATOR_COLUMNS), dtype="float64")
    ok = bars["close"].notna().to_numpy()
    if not ok.any():
        return out
    b = bars.loc[ok]
    h, lo, c, v = (b[k].to_numpy(dtype=np.float64) for k in ("high", "low", "close", "volume"))
    cols: dict[str, np.ndarray] = {}
    cols["rsi_14"] = talib.RSI(c, timeperiod=14)
    cols["macd"], cols["macd_signal"], cols["macd_hist"] = talib.MACD(c, 12, 26, 9)
    cols["atr_14"] = talib.ATR(h, lo, c, timeperiod=14)
    cols["natr_14"] = talib.NATR(h, lo, c, timeperiod=14)
    up, mid, low = talib.BBANDS(c, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    cols["bb_upper"], cols["bb_middle"], cols["bb_lower"] = up, mid, low
    with np.errstate(divide="ignore", invalid="ignore"):
        width = up - low
        cols["bb_pct_b"] = np.where(width != 0, (c - low) / width, np.nan)
        cols["bb_width"] = np.where(mid != 0, width / mid, np.nan)
    for n in (9, 21, 50):
        cols[f"ema_{n}"] = talib.EMA(c, timeperiod=n)
        cols[f"sma_{n}"] = talib.SMA(c, timeperiod=n)
    cols["adx_14"] = talib.ADX(h, lo, c, timeperiod=14)
    cols["stoch_k"], cols["stoch_d"] = talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
    cols["willr_14"] = talib.WILLR(h, lo, c, timeperiod=14)
    cols["cci_20"] = talib.CCI(h, lo, c, timeperiod=20)
    cols["mfi_14"] = talib.MFI(h, lo, c, v, timeperiod=14)
    cols["obv"] = talib.OBV(c, v)
    cols["roc_10"] = talib.ROC(c, timeperiod=10)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.r_[np.nan, np.log(c[1:] / c[:-1])]
    cols["log_return"] = lr
    cols["realized_vol_20"] = np.sqrt(pd.Series(lr**2).rolling(20, min_periods=20).sum().to_numpy())
    for k, arr in cols.items():
        out.loc[ok, k] = arr
    return out
