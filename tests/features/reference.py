"""An independent pandas implementation of every feature, written from ../shared/FEATURES.md (not from
the SQL): the tests compare features_1m/5m/15m with it on the same raw rows.

Input: the raw tables as DataFrames (times as tz-aware UTC timestamps, book levels as lists). Output:
a DataFrame per timeframe indexed by (symbol, bucket) with bucket_end and every FEATURES.md column.
Everything is computed straight from raw rows for every width (no roll-up from 1m bars).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

WIDTHS = {"1m": 60, "5m": 300, "15m": 900}
DEFAULT_LARGE_NOTIONAL = 100_000.0
TRADE_COLS = [
    "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "fill_count", "buy_volume",
    "sell_volume", "volume_delta", "cvd", "vwap", "buy_pressure", "trade_intensity_1s", "trade_intensity_5s",
    "trade_intensity_10s", "large_trade_count", "large_trade_volume", "large_trade_pct",
]  # fmt: skip
BOOK_COLS = [
    "imbalance_5", "imbalance_10", "imbalance_20", "spread_avg", "spread_std", "spread_bps_avg",
    "weighted_mid_diff_bps", "bid_slope", "ask_slope", "bid_vol_ratio_5_20", "ask_vol_ratio_5_20", "ofi",
    "snapshot_count",
]  # fmt: skip
# Book depth bands (docs/FEATURES.md "Book depth bands"): band label -> the band in percent of mid
DEPTH_BANDS = {"0p2": 0.2, "1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "5": 5.0}
DEPTH_COLS = [
    f"{kind}_{label}pct"
    for kind in ("depth_imbalance", "notional_imbalance", "bid_depth", "ask_depth")
    for label in DEPTH_BANDS
]
MARKET_COLS = [
    "mark_price", "index_price", "spot_premium_pct", "funding_rate", "funding_rate_predicted", "funding_delta",
    "open_interest", "oi_change_pct", "liq_long_vol", "liq_short_vol", "liq_ratio",
]  # fmt: skip
QUALITY_COLS = [
    "trade_ids_missing", "trades_complete", "book_coverage", "book_resyncs", "mark_coverage", "oi_age_s",
    "quiet_s",
]  # fmt: skip
COLUMNS = ["bucket_end", *TRADE_COLS, *BOOK_COLS, *DEPTH_COLS, *MARKET_COLS, *QUALITY_COLS]
INT_COLS = {
    "trade_count",
    "fill_count",
    "large_trade_count",
    "snapshot_count",
    "trade_ids_missing",
    "book_resyncs",
}
BOOL_COLS = {"trades_complete"}


@dataclass
class Raw:
    """The raw rows, one DataFrame per table (empty frames allowed)."""

    agg_trades: pd.DataFrame
    book_snapshots: pd.DataFrame
    mark_prices: pd.DataFrame
    funding_rates: pd.DataFrame
    open_interest: pd.DataFrame
    liquidations: pd.DataFrame
    large_notional: dict[str, float] = field(default_factory=dict)
    agg_trade_gaps: pd.DataFrame | None = None  # symbol, from_id, to_id, status
    ingest_events: pd.DataFrame | None = None  # ts, symbol, kind, detail (a dict)
    price_klines: pd.DataFrame | None = None  # symbol, kind, ts (open time), close
    book_depth_bands: pd.DataFrame | None = None  # symbol, ts, percentage, depth, notional


def _us(ts: pd.Series) -> np.ndarray:
    """Times as int64 microseconds since the epoch."""
    return pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy()


def _bucket(us: np.ndarray, seconds: int) -> np.ndarray:
    step = seconds * 1_000_000
    return us // step * step


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    out = num / den
    return out.where(den != 0)


def _safe(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where((den == 0) | np.isnan(den) | np.isnan(num), np.nan, out)


# ---------------------------------------------------------------- trades


def trades_bars(raw: Raw, seconds: int) -> pd.DataFrame:
    t = raw.agg_trades
    if t.empty:
        return pd.DataFrame(columns=["symbol", "bucket", *TRADE_COLS]).set_index(["symbol", "bucket"])
    t = t.assign(us=_us(t["ts"])).sort_values(["symbol", "us", "agg_id"], kind="stable")
    t["bucket"] = _bucket(t["us"].to_numpy(), seconds)
    t["notional"] = t["price"] * t["quantity"]
    t["buy_q"] = np.where(~t["is_buyer_maker"].astype(bool), t["quantity"], 0.0)
    t["sell_q"] = np.where(t["is_buyer_maker"].astype(bool), t["quantity"], 0.0)
    t["fills"] = t["last_trade_id"] - t["first_trade_id"] + 1
    thr = t["symbol"].map(lambda s: raw.large_notional.get(s, DEFAULT_LARGE_NOTIONAL))
    large = t["notional"] >= thr
    t["large_n"] = large.astype(np.int64)
    t["large_q"] = np.where(large, t["quantity"], 0.0)
    g = t.groupby(["symbol", "bucket"], sort=True)
    out = pd.DataFrame(
        {
            "open": g["price"].first(),
            "high": g["price"].max(),
            "low": g["price"].min(),
            "close": g["price"].last(),
            "volume": g["quantity"].sum(),
            "quote_volume": g["notional"].sum(),
            "trade_count": g.size(),
            "fill_count": g["fills"].sum(),
            "buy_volume": g["buy_q"].sum(),
            "sell_volume": g["sell_q"].sum(),
            "large_trade_count": g["large_n"].sum(),
            "large_trade_volume": g["large_q"].sum(),
        }
    )
    out["volume_delta"] = out["buy_volume"] - out["sell_volume"]
    out["vwap"] = _ratio(out["quote_volume"], out["volume"])
    out["buy_pressure"] = _ratio(out["buy_volume"], out["volume"])
    out["large_trade_pct"] = _ratio(out["large_trade_volume"], out["volume"])
    # cvd: running sum since 00:00 UTC of the bar's day, this bar included
    day = out.index.get_level_values("bucket") // 86_400_000_000
    out["cvd"] = out.groupby([out.index.get_level_values("symbol"), day])["volume_delta"].cumsum()
    # trades per second in the bar's busiest N-second (epoch-aligned) sub-bucket
    for n in (1, 5, 10):
        sub = t.assign(sub=_bucket(t["us"].to_numpy(), n)).groupby(["symbol", "bucket", "sub"]).size()
        out[f"trade_intensity_{n}s"] = sub.groupby(level=["symbol", "bucket"]).max() / n
    return out[TRADE_COLS]


# ---------------------------------------------------------------- book


def _levels(rows: pd.Series, k: int) -> np.ndarray:
    """n x k float array of the first k entries of each row's list, NaN where a row has fewer."""
    out = np.full((len(rows), k), np.nan)
    for i, lst in enumerate(rows):
        vals = list(lst or [])[:k]
        out[i, : len(vals)] = vals
    return out


def snapshot_values(b: pd.DataFrame) -> pd.DataFrame:
    """FEATURES.md's per-snapshot values of each book row (levels as lists, level 1 first)."""
    bp, bq = _levels(b["bid_px"], 20), _levels(b["bid_qty"], 20)
    ap, aq = _levels(b["ask_px"], 20), _levels(b["ask_qty"], 20)
    b1, a1, bq1, aq1 = bp[:, 0], ap[:, 0], bq[:, 0], aq[:, 0]
    mid = (b1 + a1) / 2
    spread = a1 - b1
    wmid = _safe(b1 * aq1 + a1 * bq1, bq1 + aq1)
    out = {
        "spread": spread,
        "spread_bps": _safe(spread, mid) * 1e4,
        "weighted_mid_diff_bps": _safe(wmid - mid, mid) * 1e4,
    }

    def top(q: np.ndarray, n: int) -> np.ndarray:  # sum over the levels present among the top n
        return np.nansum(q[:, :n], axis=1)

    for n in (5, 10, 20):
        sb, sa = top(bq, n), top(aq, n)
        out[f"imbalance_{n}"] = _safe(sb - sa, sb + sa)
    present_b = (~np.isnan(bp)).sum(axis=1)
    present_a = (~np.isnan(ap)).sum(axis=1)
    deepest_b = np.array([bp[i, c - 1] if c else np.nan for i, c in enumerate(present_b)])
    deepest_a = np.array([ap[i, c - 1] if c else np.nan for i, c in enumerate(present_a)])
    out["bid_slope"] = _safe(np.where(np.isnan(mid), np.nan, top(bq, 20)), mid - deepest_b)
    out["ask_slope"] = _safe(np.where(np.isnan(mid), np.nan, top(aq, 20)), deepest_a - mid)
    out["bid_vol_ratio_5_20"] = _safe(top(bq, 5), top(bq, 20))
    out["ask_vol_ratio_5_20"] = _safe(top(aq, 5), top(aq, 20))
    # OFI term against the symbol's previous snapshot in (ts, last_update_id) order
    pb, pbq = np.r_[np.nan, b1[:-1]], np.r_[np.nan, bq1[:-1]]
    pa, paq = np.r_[np.nan, a1[:-1]], np.r_[np.nan, aq1[:-1]]
    with np.errstate(invalid="ignore"):
        e = (
            np.where(b1 >= pb, bq1, 0.0)
            - np.where(b1 <= pb, pbq, 0.0)
            - np.where(a1 <= pa, aq1, 0.0)
            + np.where(a1 >= pa, paq, 0.0)
        )
    first_of_symbol = b["symbol"].ne(b["symbol"].shift()).to_numpy()
    undefined = first_of_symbol | np.isnan(b1) | np.isnan(a1) | np.isnan(pb) | np.isnan(pa)
    out["ofi"] = np.where(undefined, np.nan, e)
    return pd.DataFrame(out, index=b.index)


def book_bars(raw: Raw, seconds: int) -> pd.DataFrame:
    b = raw.book_snapshots
    if b.empty:
        return pd.DataFrame(columns=["symbol", "bucket", *BOOK_COLS]).set_index(["symbol", "bucket"])
    b = b.assign(us=_us(b["ts"])).sort_values(["symbol", "us", "last_update_id"], kind="stable")
    b = b.reset_index(drop=True)
    v = snapshot_values(b)
    v["symbol"] = b["symbol"]
    v["bucket"] = _bucket(b["us"].to_numpy(), seconds)
    g = v.groupby(["symbol", "bucket"], sort=True)
    out = pd.DataFrame(
        {
            "imbalance_5": g["imbalance_5"].mean(),
            "imbalance_10": g["imbalance_10"].mean(),
            "imbalance_20": g["imbalance_20"].mean(),
            "spread_avg": g["spread"].mean(),
            "spread_std": g["spread"].std(ddof=1),
            "spread_bps_avg": g["spread_bps"].mean(),
            "weighted_mid_diff_bps": g["weighted_mid_diff_bps"].mean(),
            "bid_slope": g["bid_slope"].mean(),
            "ask_slope": g["ask_slope"].mean(),
            "bid_vol_ratio_5_20": g["bid_vol_ratio_5_20"].mean(),
            "ask_vol_ratio_5_20": g["ask_vol_ratio_5_20"].mean(),
            "ofi": g["ofi"].sum(min_count=1),
            "snapshot_count": g.size(),
        }
    )
    return out[BOOK_COLS]


# ---------------------------------------------------------------- book depth bands


def depth_bars(raw: Raw, seconds: int) -> pd.DataFrame:
    """Per bar and band: each side's mean over the bar's rows of that band (bids at -b %, asks at
    +b %) of depth and of notional; the imbalances of those means. A band without rows: NaN."""
    d = raw.book_depth_bands
    if d is None or d.empty:
        return pd.DataFrame(columns=["symbol", "bucket", *DEPTH_COLS]).set_index(["symbol", "bucket"])
    d = d.assign(bucket=_bucket(_us(d["ts"]), seconds), pct=d["percentage"].astype(float).round(2))
    means = d.groupby(["symbol", "bucket", "pct"])[["depth", "notional"]].mean()
    keys = pd.MultiIndex.from_frame(
        d[["symbol", "bucket"]].drop_duplicates().sort_values(["symbol", "bucket"])
    )
    out = pd.DataFrame(index=keys)

    def side(pct: float, col: str) -> pd.Series:
        rows = (
            means.xs(pct, level="pct")[col]
            if pct in means.index.get_level_values("pct")
            else pd.Series(dtype=float)
        )
        return rows.reindex(keys).astype(float)

    for label, b in DEPTH_BANDS.items():
        bid, ask = side(-b, "depth"), side(b, "depth")
        bid_n, ask_n = side(-b, "notional"), side(b, "notional")
        out[f"depth_imbalance_{label}pct"] = _safe((bid - ask).to_numpy(), (bid + ask).to_numpy())
        out[f"notional_imbalance_{label}pct"] = _safe((bid_n - ask_n).to_numpy(), (bid_n + ask_n).to_numpy())
        out[f"bid_depth_{label}pct"] = bid.to_numpy()
        out[f"ask_depth_{label}pct"] = ask.to_numpy()
    return out[DEPTH_COLS]


# ---------------------------------------------------------------- market


def _last_before(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each t in `at`, the value of the last observation with time < t (NaN when none);
    `times` sorted ascending."""
    idx = np.searchsorted(times, at, side="left") - 1
    out = np.full(len(at), np.nan)
    ok = idx >= 0
    out[ok] = values[idx[ok]]
    return out


def _minute_values(raw: Raw, stream_col: str, kind: str) -> pd.Series:
    """(symbol, minute in us) -> the minute's value: the stream's last non-NULL `stream_col` in the
    minute when the stream has one, else the close of the minute's `kind` kline."""
    parts = []
    m = raw.mark_prices
    if not m.empty:
        m = (
            m[m[stream_col].notna()]
            .assign(us=lambda x: _us(x["ts"]))
            .sort_values(["symbol", "us"], kind="stable")
        )
        m["minute"] = _bucket(m["us"].to_numpy(), 60)
        parts.append(m.groupby(["symbol", "minute"])[stream_col].last().astype("float64"))
    k = raw.price_klines
    if k is not None and not k.empty:
        k = k[k["kind"] == kind]
        kl = pd.Series(
            k["close"].to_numpy(float), index=pd.MultiIndex.from_arrays([k["symbol"], _us(k["ts"])])
        )
        parts.append(kl)
    if not parts:
        return pd.Series(dtype="float64")
    out = parts[0] if len(parts) == 1 else parts[0].combine_first(parts[1])  # the stream wins a minute
    out.index = out.index.set_names(["symbol", "minute"])
    return out.sort_index()


def _bar_last(values: pd.Series, seconds: int) -> pd.Series:
    """(symbol, bucket) -> the value of the bar's latest minute that has one."""
    if values.empty:
        return values
    df = values.rename("v").reset_index()
    df["bucket"] = _bucket(df["minute"].to_numpy(np.int64), seconds)
    return df.sort_values(["symbol", "minute"]).groupby(["symbol", "bucket"])["v"].last()


def market_bars(raw: Raw, seconds: int, bars: pd.MultiIndex) -> pd.DataFrame:
    """Market columns for every bar in `bars` (symbol, bucket in us)."""
    step = seconds * 1_000_000
    out = pd.DataFrame(index=bars, columns=MARKET_COLS, dtype="float64")
    for col, kind in (("mark_price", "mark"), ("index_price", "index")):
        out[col] = _bar_last(_minute_values(raw, col, kind), seconds).reindex(bars).to_numpy(float)
    idx = out["index_price"]
    out["spot_premium_pct"] = ((out["mark_price"] - idx) / idx * 100).where(idx != 0)
    m = raw.mark_prices
    if not m.empty:  # the stream's predicted funding rate: the bar's last non-NULL r
        m = m.assign(us=_us(m["ts"])).sort_values(["symbol", "us"], kind="stable")
        m["bucket"] = _bucket(m["us"].to_numpy(), seconds)
        r_last = m[m["funding_rate"].notna()].groupby(["symbol", "bucket"])["funding_rate"].last()
        out["funding_rate_predicted"] = r_last.reindex(bars).to_numpy(float)

    f = raw.funding_rates
    oi = raw.open_interest
    sym = bars.get_level_values(0).to_numpy()
    bucket = bars.get_level_values(1).to_numpy().astype(np.int64)

    def funding_at(symbols: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """funding_rate of bar `starts`: the last settled rate with funding_ts before the bar's end."""
        res = np.full(len(starts), np.nan)
        for s in np.unique(symbols):
            sel = symbols == s
            if not f.empty:
                fs = f[f["symbol"] == s].assign(us=lambda x: _us(x["funding_ts"])).sort_values("us")
                res[sel] = _last_before(
                    fs["us"].to_numpy(), fs["funding_rate"].to_numpy(float), starts[sel] + step
                )
        return res

    def oi_before(symbols: np.ndarray, t: np.ndarray) -> np.ndarray:
        res = np.full(len(t), np.nan)
        if oi.empty:
            return res
        for s in np.unique(symbols):
            sel = symbols == s
            os_ = oi[oi["symbol"] == s].assign(us=lambda x: _us(x["ts"])).sort_values("us")
            res[sel] = _last_before(os_["us"].to_numpy(), os_["open_interest"].to_numpy(float), t[sel])
        return res

    fr = funding_at(sym, bucket)
    fr_prev = funding_at(sym, bucket - step)
    out["funding_rate"] = fr
    out["funding_delta"] = fr - fr_prev
    o_now = oi_before(sym, bucket + step)
    o_prev = oi_before(sym, bucket)
    out["open_interest"] = o_now
    with np.errstate(divide="ignore", invalid="ignore"):
        out["oi_change_pct"] = np.where(
            (o_prev == 0) | np.isnan(o_prev), np.nan, (o_now - o_prev) / o_prev * 100
        )

    lq = raw.liquidations
    if not lq.empty:
        lq = lq.assign(us=_us(lq["ts"]))
        lq["bucket"] = _bucket(lq["us"].to_numpy(), seconds)
        lq["long"] = np.where(lq["side"] == "SELL", lq["quantity"], 0.0)
        lq["short"] = np.where(lq["side"] == "BUY", lq["quantity"], 0.0)
        g = lq.groupby(["symbol", "bucket"])
        liq = pd.DataFrame({"liq_long_vol": g["long"].sum(), "liq_short_vol": g["short"].sum()})
        liq["liq_ratio"] = _ratio(liq["liq_long_vol"], liq["liq_long_vol"] + liq["liq_short_vol"])
        common = liq.index.intersection(bars)
        out.loc[common, ["liq_long_vol", "liq_short_vol", "liq_ratio"]] = liq.loc[common].to_numpy()
    return out


# ---------------------------------------------------------------- quality


def _gap_spans(raw: Raw) -> list[tuple[str, int, float, float]]:
    """(symbol, missing ids, t0 s, t1 s) of every gap not filled: t0/t1 the trade times of the stored
    trades just below / above the gap (-inf / +inf when there is none)."""
    g = raw.agg_trade_gaps
    if g is None or g.empty:
        return []
    t = raw.agg_trades
    out = []
    for r in g[g["status"] != "filled"].itertuples():
        mine = t[t["symbol"] == r.symbol] if not t.empty else t
        below = mine[mine["agg_id"] < r.from_id]
        above = mine[mine["agg_id"] > r.to_id]
        t0 = _us(below.loc[[below["agg_id"].idxmax()], "ts"])[0] / 1e6 if len(below) else -np.inf
        t1 = _us(above.loc[[above["agg_id"].idxmin()], "ts"])[0] / 1e6 if len(above) else np.inf
        out.append((r.symbol, int(r.to_id - r.from_id + 1), t0, t1))
    return out


def quality_bars(raw: Raw, seconds: int, bars: pd.MultiIndex) -> pd.DataFrame:
    """docs/FEATURES.md "Quality", bar by bar, straight from the raw rows (seconds enumerated)."""
    out = pd.DataFrame(index=bars, columns=QUALITY_COLS, dtype="object")
    t, b, m, oi = raw.agg_trades, raw.book_snapshots, raw.mark_prices, raw.open_interest
    t_us = {s: np.sort(_us(x["ts"])) for s, x in t.groupby("symbol")} if not t.empty else {}
    b_us = {s: _us(x["ts"]) for s, x in b.groupby("symbol")} if not b.empty else {}
    m_us = {s: _us(x["ts"]) for s, x in m.groupby("symbol")} if not m.empty else {}
    oi_us = {s: np.sort(_us(x["ts"])) for s, x in oi.groupby("symbol")} if not oi.empty else {}
    spans = _gap_spans(raw)
    ev = raw.ingest_events
    resync_us: dict[str, list[int]] = {}
    if ev is not None and not ev.empty:
        for r in ev[(ev["kind"] == "resync") & ev["symbol"].notna()].itertuples():
            d = r.detail or {}
            us = int(d["T"]) * 1000 if isinstance(d.get("T"), int | float) else int(_us(pd.Series([r.ts]))[0])
            resync_us.setdefault(r.symbol, []).append(us)
    rows = []
    for sym, start_us in bars:
        lo, hi = start_us, start_us + seconds * 1_000_000
        lo_s, hi_s = lo // 1_000_000, hi // 1_000_000
        ts_ = t_us.get(sym, np.zeros(0, np.int64))
        mine = [(n, t0, t1) for s, n, t0, t1 in spans if s == sym and t0 < hi_s and t1 >= lo_s]
        missing = sum(n for n, _, _ in mine)
        known = bool((ts_ < lo).any() and (ts_ >= hi).any())
        in_bar = ts_[(ts_ >= lo) & (ts_ < hi)]
        quiet = None
        if known:
            secs = np.arange(lo_s, hi_s)
            traded = np.isin(secs, np.unique(in_bar // 1_000_000))
            in_gap = np.zeros(len(secs), bool)
            for _, t0, t1 in mine:
                in_gap |= (secs > np.floor(t0)) & (secs < np.floor(t1))
            quiet = float((~traded & ~in_gap).sum())
        bu = b_us.get(sym, np.zeros(0, np.int64))
        slots = np.unique(bu[(bu >= lo) & (bu < hi)] // 500_000).size
        mu = m_us.get(sym, np.zeros(0, np.int64))
        marked = np.unique(mu[(mu >= lo) & (mu < hi)] // 1_000_000).size
        ou = oi_us.get(sym, np.zeros(0, np.int64))
        before = ou[ou < hi]
        age = (hi - before[-1]) / 1e6 if len(before) else None
        rs = sum(1 for u in resync_us.get(sym, []) if lo <= u < hi)
        rows.append(
            [missing, missing == 0 and known, slots / (2 * seconds), rs, marked / seconds, age, quiet]
        )
    out.loc[:, :] = rows if rows else out
    return out


# ---------------------------------------------------------------- all of it


def _present(df: pd.DataFrame, time_col: str, seconds: int) -> set[tuple[str, int]]:
    if df.empty:
        return set()
    return set(zip(df["symbol"], _bucket(_us(df[time_col]), seconds), strict=True))


def features(raw: Raw, tf: str) -> pd.DataFrame:
    """The FEATURES.md columns of every bar of width `tf`, indexed by (symbol, bucket as UTC timestamp)."""
    seconds = WIDTHS[tf]
    keys: set[tuple[str, int]] = set()
    for df in (raw.agg_trades, raw.book_snapshots, raw.mark_prices, raw.open_interest, raw.liquidations):
        keys |= _present(df, "ts", seconds)
    if raw.price_klines is not None:  # mark and index klines, by open time
        keys |= _present(raw.price_klines[raw.price_klines["kind"].isin(["mark", "index"])], "ts", seconds)
    if raw.book_depth_bands is not None:
        keys |= _present(raw.book_depth_bands, "ts", seconds)
    bars = pd.MultiIndex.from_tuples(sorted(keys), names=["symbol", "bucket"])
    if not len(bars):
        return pd.DataFrame(columns=COLUMNS)
    out = pd.DataFrame(index=bars)
    out = out.join(trades_bars(raw, seconds)).join(book_bars(raw, seconds)).join(depth_bars(raw, seconds))
    out = out.join(market_bars(raw, seconds, bars))
    out = out.join(quality_bars(raw, seconds, bars))
    bucket_us = out.index.get_level_values("bucket").to_numpy().astype(np.int64)
    out["bucket_end"] = pd.to_datetime(bucket_us + seconds * 1_000_000, unit="us", utc=True)
    out.index = pd.MultiIndex.from_arrays(
        [out.index.get_level_values("symbol"), pd.to_datetime(bucket_us, unit="us", utc=True)],
        names=["symbol", "bucket"],
    )
    return out[COLUMNS]
