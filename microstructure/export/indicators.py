"""Technical indicators on a symbol's bars (TA-Lib), and how much history each needs to be warm.

Computed on the bars that have trades (OHLCV present), in time order; bars without trades get NaN.
Every indicator at a bar uses that bar and earlier ones only (TA-Lib is causal), so adding later bars
changes nothing before them.

| column | TA-Lib / formula | parameters | bars needed before (WARMUP_NEEDED) |
| --- | --- | --- | --- |
| rsi_14 | RSI | 14 | 200 (Wilder smoothing converged to 1e-6) |
| macd, macd_signal, macd_hist | MACD | 12, 26, 9 | 205, 270, 270 (EMA 26, then the EMA 9 signal) |
| atr_14, natr_14 | ATR, NATR | 14 | 200 |
| bb_upper, bb_middle, bb_lower | BBANDS | 20, 2, 2 (SMA) | 19 |
| bb_pct_b, bb_width | (close - lower) / (upper - lower), (upper - lower) / middle | from BBANDS | 19 |
| ema_9, ema_21, ema_50 | EMA | 9, 21, 50 | 62, 145, 345 |
| sma_9, sma_21, sma_50 | SMA | 9, 21, 50 | 8, 20, 49 |
| adx_14 | ADX | 14 | 230 |
| stoch_k, stoch_d | STOCH | 14, 3 (SMA), 3 (SMA) | 17 |
| willr_14 | WILLR | 14 | 13 |
| cci_20 | CCI | 20 | 19 |
| mfi_14 | MFI | 14 | 14 |
| obv | running sum since 00:00 UTC of the bar's day of sign(close - previous close) * volume | | 1 |
| roc_10 | ROC | 10 | 10 |
| log_return | ln(close / previous close) | | 1 |
| realized_vol_20 | sqrt(sum of the last 20 squared log returns) | 20 | 20 |

Bars without trades are skipped (they are not counted either); "previous close" is the previous bar
with trades, which may lie in the previous day.

Independent of where a pull starts: indicator values are computed on a fixed grid of anchor
windows, never from the first bar a pull happens to read. Time is cut into chunks of ANCHOR_DAYS[tf]
UTC days counted from the Unix epoch (1 day at 1m, 2 at 5m, 4 at 15m: at least WARMUP_BARS bars);
every bar of chunk k takes its values from the indicators computed over the bars of chunks k-1 and
k (from chunk k-1's first bar to the bar itself). So a bar's value depends on the bar and the bars
of its own and the previous chunk, whatever `start` a pull has; two pulls agree exactly on every
shared bar. OBV is anchored to each UTC day (like cvd), which lies inside that window.

EMA-type indicators (EMA, MACD, RSI, ATR, ADX) converge from their seed: "bars needed" is how many
bars before a value make it agree with an unbounded history to under 1e-6 relative (TA-Lib's
lookback is only when a first value exists). A bar has between one and two chunks of bars before it
(>= WARMUP_BARS when the history is there); with less history the pull warns (see pull.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INDICATOR_COLUMNS: tuple[str, ...] = (
    "rsi_14", "macd", "macd_signal", "macd_hist", "atr_14", "natr_14", "bb_upper", "bb_middle", "bb_lower",
    "bb_pct_b", "bb_width", "ema_9", "ema_21", "ema_50", "sma_9", "sma_21", "sma_50", "adx_14", "stoch_k",
    "stoch_d", "willr_14", "cci_20", "mfi_14", "obv", "roc_10", "log_return", "realized_vol_20",
)  # fmt: skip
WARMUP_NEEDED: dict[str, int] = {
    "rsi_14": 200, "macd": 205, "macd_signal": 270, "macd_hist": 270, "atr_14": 200, "natr_14": 200,
    "bb_upper": 19, "bb_middle": 19, "bb_lower": 19, "bb_pct_b": 19, "bb_width": 19, "ema_9": 62,
    "ema_21": 145, "ema_50": 345, "sma_9": 8, "sma_21": 20, "sma_50": 49, "adx_14": 230, "stoch_k": 17,
    "stoch_d": 17, "willr_14": 13, "cci_20": 19, "mfi_14": 14, "obv": 1, "roc_10": 10, "log_return": 1,
    "realized_vol_20": 20,
}  # fmt: skip
WARMUP_BARS = 350  # >= every WARMUP_NEEDED
ANCHOR_DAYS = {"1m": 1, "5m": 2, "15m": 4}  # chunk length: ANCHOR_DAYS * bars a day >= WARMUP_BARS
DAY = pd.Timedelta(days=1)


def chunk_start(t: pd.Timestamp, timeframe: str) -> pd.Timestamp:
    """The first instant of the anchor chunk holding `t` (chunks of ANCHOR_DAYS days from the epoch)."""
    n = ANCHOR_DAYS[timeframe]
    days = (pd.Timestamp(t) - pd.Timestamp(0, tz="UTC")) // DAY
    return pd.Timestamp(0, tz="UTC") + (days - days % n) * DAY


def window_start(t: pd.Timestamp, timeframe: str) -> pd.Timestamp:
    """Where the bars must be read from so that a bar at `t` gets its anchored value: the start of
    the chunk before t's."""
    return chunk_start(t, timeframe) - ANCHOR_DAYS[timeframe] * DAY


def anchored_indicators(bars: pd.DataFrame, timeframe: str, first: pd.Timestamp) -> pd.DataFrame:
    """INDICATOR_COLUMNS for one symbol's bars (DatetimeIndex of bucket starts, in time order), for
    the bars at or after `first`: each chunk's values from the window of its chunk and the one
    before (see the module's docstring). `bars` must start at or before window_start(first)."""
    times = pd.DatetimeIndex(bars.index)
    keep = times >= first
    out = pd.DataFrame(index=bars.index[keep], columns=list(INDICATOR_COLUMNS), dtype="float64")
    if not keep.any():
        return out
    width = pd.Timedelta(days=ANCHOR_DAYS[timeframe])
    k = chunk_start(times[keep][0], timeframe)
    last = times[-1]
    parts = []
    while k <= last:
        win = (times >= k - width) & (times < k + width)
        ind = indicators(bars.loc[win])
        sel = (pd.DatetimeIndex(ind.index) >= max(k, first)) & (pd.DatetimeIndex(ind.index) < k + width)
        parts.append(ind.loc[sel])
        k += width
    got = pd.concat(parts) if parts else out
    return got.reindex(out.index)


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
    cols["obv"] = _daily_obv(b.index, c, v)
    cols["roc_10"] = talib.ROC(c, timeperiod=10)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.r_[np.nan, np.log(c[1:] / c[:-1])]
    cols["log_return"] = lr
    cols["realized_vol_20"] = np.sqrt(pd.Series(lr**2).rolling(20, min_periods=20).sum().to_numpy())
    for k, arr in cols.items():
        out.loc[ok, k] = arr
    return out


def _daily_obv(index: pd.Index, c: np.ndarray, v: np.ndarray) -> np.ndarray:
    """OBV anchored to each UTC day: the running sum since 00:00 of the bar's day of
    sign(close - previous close) * volume (the first bar read adds nothing: no previous close)."""
    step = np.r_[0.0, np.sign(np.diff(c)) * v[1:]]
    days = pd.DatetimeIndex(index).floor("D")
    return pd.Series(step).groupby(np.asarray(days)).cumsum().to_numpy()
