"""Synthetic market generator: one consistent, deterministic market per symbol.

Time is cut into segments (a history day is one segment; a live period may be cut into short chunks).
A segment is generated in one vectorised pass from the previous segment's end state, so aggregate
ids, trade ids, price and volatility continue across days and from history into live.

Prices are integers in units of 10**-price_decimals (a multiple of the tick), quantities integers in
units of 10**-qty_decimals. Per segment:

- taker orders arrive in clusters (a Poisson process of bursts, burst sizes geometric, gaps within a
  burst exponential), with an intensity that follows a GARCH(1,1) volatility (per minute) and an
  intraday seasonality; each order is filled by a geometric number of maker orders (trade ids);
- the mid price is a log random walk whose per-order variance follows the minute's GARCH variance;
  buys execute at the ask, sells at the bid (spread 1 tick mostly);
- aggregate trades are built by Binance's rule: consecutive fills with the same price and taker side
  within 100 ms form one aggregate trade (ids consecutive, f..l the fills);
- per second: mark price, index price (through a mean-reverting premium), estimated funding rate;
  per minute: open interest; funding settles every 8 hours from the interval's mean premium;
  liquidations come in bursts around large one-minute moves.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from microstructure.exchange.config import DAY_MS, SymbolSpec

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
FUNDING_MS = 8 * 3_600_000
INTEREST = 0.0001
FUNDING_CLAMP = 0.0005
FUNDING_CAP = 0.0075
AGG_WINDOW_MS = 100
BOOK_LEVELS = 1000
GARCH_ALPHA = 0.08
GARCH_BETA = 0.90


def symbol_hash(symbol: str) -> int:
    return int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big") >> 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser: a stateless hash of uint64 values."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_hash(*parts: np.ndarray | int) -> np.ndarray:
    """Deterministic uniform(0,1) values from integer keys (broadcast)."""
    acc = np.uint64(0x12345)
    with np.errstate(over="ignore"):
        for p in parts:
            acc = splitmix64(np.asarray(acc, dtype=np.uint64) ^ np.asarray(p).astype(np.uint64))
    return (np.asarray(acc) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class MarketState:
    """Everything a segment needs from the one before it."""

    t_ms: int
    agg_id: int
    trade_id: int
    log_mid: float  # log of the mid price in price units
    bid: int  # price units
    ask: int
    var: float  # GARCH variance of one-minute log returns
    premium: float
    premium_level: float  # slow mean of the premium (moves daily)
    log_oi: float
    fund_start: int
    fund_sum: float
    fund_n: int


@dataclass
class Segment:
    """Generated data of [t0, t1) for one symbol; arrays sorted by time."""

    t0: int
    t1: int
    start: MarketState
    end: MarketState
    # aggregate trades
    agg_id0: int
    T: np.ndarray  # int64 ms
    price: np.ndarray  # int64 price units
    qty: np.ndarray  # int64 qty units
    first: np.ndarray  # int64 first trade id
    last: np.ndarray  # int64 last trade id
    maker: np.ndarray  # bool: buyer is maker (the taker sold)
    bid: np.ndarray  # int64 best bid after the trade
    ask: np.ndarray  # int64 best ask after the trade
    # per second, at t0 + 1000*i (value holding over [t, t+1000))
    mark: np.ndarray  # float64
    index: np.ndarray
    premium: np.ndarray
    est_rate: np.ndarray  # estimated funding rate
    # per minute, at t0 + 60000*j
    oi: np.ndarray  # float64 base units
    # settlements: times, rates, mark prices at settlement
    funding_T: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    funding_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    funding_mark: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # liquidations
    liq_T: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    liq_sell: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # side SELL: a long closed
    liq_qty: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    liq_price: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    liq_avg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n(self) -> int:
        return len(self.T)

    @property
    def agg_id_end(self) -> int:
        return self.agg_id0 + len(self.T)


def initial_state(spec: SymbolSpec, seed: int, t_ms: int) -> MarketState:
    rng = np.random.default_rng([seed, symbol_hash(spec.symbol), 7])
    units = 10**spec.price_decimals
    price = spec.start_price * math.exp(rng.normal(0, 0.05))
    mid_units = price * units
    bid = int(mid_units // spec.tick) * spec.tick
    sigma_min = spec.daily_vol / math.sqrt(1440)
    agg0 = int(rng.integers(100_000_000, 900_000_000))
    return MarketState(
        t_ms=t_ms,
        agg_id=agg0,
        trade_id=agg0 * 3 + int(rng.integers(0, 1_000_000)),
        log_mid=math.log(bid + spec.tick / 2),
        bid=bid,
        ask=bid + spec.tick,
        var=sigma_min**2,
        premium=0.0001,
        premium_level=float(rng.normal(0.0002, 0.0006)),
        log_oi=math.log(spec.activity * 80_000 * 65_000 / spec.start_price),
        fund_start=(t_ms // FUNDING_MS) * FUNDING_MS,
        fund_sum=0.0,
        fund_n=0,
    )


def _seasonality(minute_start_ms: np.ndarray) -> np.ndarray:
    h = (minute_start_ms % DAY_MS) / 3_600_000.0
    return 1.0 + 0.5 * np.exp(-(((h - 14.5) / 2.0) ** 2)) + 0.2 * np.cos(2 * np.pi * (h - 15.0) / 24.0)


def funding_from_premium(avg_premium: np.ndarray | float) -> np.ndarray:
    p = np.asarray(avg_premium, dtype=np.float64)
    rate = p + np.clip(INTEREST - p, -FUNDING_CLAMP, FUNDING_CLAMP)
    return np.round(np.clip(rate, -FUNDING_CAP, FUNDING_CAP), 8)


def generate_segment(spec: SymbolSpec, seed: int, state: MarketState, t1: int, rate_per_s: float) -> Segment:
    """Generate [state.t_ms, t1) at about `rate_per_s` aggregate trades per second."""
    t0 = state.t_ms
    dur = t1 - t0
    assert dur > 0 and dur % 1000 == 0, "segments are whole seconds"
    rng = np.random.default_rng([seed, symbol_hash(spec.symbol), t0 // 1000, dur // 1000])
    units = 10**spec.price_decimals
    tick = spec.tick

    # --- volatility: GARCH(1,1) per minute (a Python loop over minutes, not rows)
    n_min = -(-dur // MINUTE_MS)
    minute_t = t0 + MINUTE_MS * np.arange(n_min, dtype=np.int64)
    minute_len = np.minimum(minute_t + MINUTE_MS, t1) - minute_t
    sigma_min = spec.daily_vol / math.sqrt(1440)
    omega = sigma_min**2 * (1 - GARCH_ALPHA - GARCH_BETA)
    shocks = rng.standard_t(5, n_min) / math.sqrt(5 / 3)
    var = np.empty(n_min)
    v = state.var
    for j in range(n_min):
        var[j] = v
        v = omega + GARCH_ALPHA * v * shocks[j] ** 2 + GARCH_BETA * v
    var_end = v

    # --- taker orders: clustered arrivals, intensity ~ volatility x seasonality
    weight = _seasonality(minute_t) * np.sqrt(var / sigma_min**2) * (minute_len / MINUTE_MS)
    n_orders_target = rate_per_s * dur / 1000.0 * 1.02  # calibrated: merging of neighbours
    cluster_mean = 3.0
    lam = weight / weight.sum() * n_orders_target / cluster_mean
    parents_per_min = rng.poisson(lam)
    n_par = int(parents_per_min.sum())
    par_t = np.repeat(minute_t, parents_per_min) + (
        rng.random(n_par) * np.repeat(minute_len, parents_per_min)
    ).astype(np.int64)
    sizes = rng.geometric(1.0 / cluster_mean, n_par)
    n = int(sizes.sum())
    cl = np.repeat(np.arange(n_par), sizes)
    starts = np.cumsum(sizes) - sizes
    gaps = rng.exponential(35.0, n)
    gaps[starts] = 0.0
    cum = np.cumsum(gaps)
    offs = (cum - np.repeat(cum[starts], sizes)).astype(np.int64)
    T = par_t[cl] + offs
    keep = t1 > T
    T, cl = T[keep], cl[keep]
    order = np.argsort(T, kind="stable")
    T, cl = T[order], cl[order]
    n = len(T)

    # --- sides: a burst mostly keeps one side
    cl_buy = rng.random(n_par) < 0.5
    flip = rng.random(n) < 0.15
    buy = cl_buy[cl] ^ flip

    # --- mid price: log random walk, per-order variance from the minute's GARCH variance,
    #     with a little of the signed order flow as impact
    minute_idx = np.minimum((T - t0) // MINUTE_MS, n_min - 1)
    prevT = np.concatenate(([t0], T[:-1]))
    dt = np.maximum(T - prevT, 1).astype(np.float64)
    step_sd = np.sqrt(var[minute_idx] * dt / MINUTE_MS)
    sign = np.where(buy, 1.0, -1.0)
    per_min = np.maximum(np.bincount(minute_idx, minlength=n_min), 1)
    impact_sd = np.sqrt(var[minute_idx] / per_min[minute_idx]) * 0.3
    # signed flow moves the price a little; the diffusion carries the rest of the minute's variance
    incr = step_sd * rng.standard_normal(n) * 0.95 + sign * impact_sd
    log_mid = state.log_mid + np.cumsum(incr)
    mid_units = np.exp(log_mid)
    spread_ticks = np.where(rng.random(n) < 0.85, 1, np.where(rng.random(n) < 0.7, 2, 3)).astype(np.int64)
    bid = (np.floor(mid_units / tick - spread_ticks / 2.0 + 0.5).astype(np.int64)) * tick
    bid = np.maximum(bid, tick)
    ask = bid + spread_ticks * tick
    px = np.where(buy, ask, bid)

    # --- fills per order and sizes (heavy tailed)
    fills = rng.geometric(0.55, n).astype(np.int64)
    lots = np.ceil(
        spec.median_lots * 0.5 * (1.0 + rng.pareto(1.4, n)) * rng.lognormal(0.0, 0.6, n) * np.sqrt(fills)
    )
    lots = np.clip(lots, 1, spec.median_lots * 20_000).astype(np.int64) * spec.step

    # --- Binance's aggregation: same price and taker side, within 100 ms of the aggregate's start
    if n:
        same = np.zeros(n, dtype=bool)
        same[1:] = (px[1:] == px[:-1]) & (buy[1:] == buy[:-1]) & (T[1:] - T[:-1] < AGG_WINDOW_MS)
        run_start_idx = np.maximum.accumulate(np.where(~same, np.arange(n), 0))
        bucket = (T - T[run_start_idx]) // AGG_WINDOW_MS
        new = ~same
        new[1:] |= bucket[1:] != bucket[:-1]
        g_start = np.flatnonzero(new)
    else:
        g_start = np.zeros(0, dtype=np.int64)
    m = len(g_start)
    g_end = np.append(g_start[1:], n) - 1 if m else g_start
    aT = T[g_start] if m else np.zeros(0, np.int64)
    a_px = px[g_start] if m else np.zeros(0, np.int64)
    a_qty = np.add.reduceat(lots, g_start) if m else np.zeros(0, np.int64)
    a_fills = np.add.reduceat(fills, g_start) if m else np.zeros(0, np.int64)
    a_first = state.trade_id + np.cumsum(a_fills) - a_fills
    a_last = a_first + a_fills - 1
    a_maker = ~buy[g_start] if m else np.zeros(0, bool)
    a_bid = bid[g_end] if m else np.zeros(0, np.int64)
    a_ask = ask[g_end] if m else np.zeros(0, np.int64)

    # --- per second: mid from the quotes in force, premium (OU per minute), mark, index, funding
    n_sec = dur // 1000
    sec_t = t0 + 1000 * np.arange(n_sec, dtype=np.int64)
    qi = np.searchsorted(aT, sec_t + 999, side="right") - 1
    sbid = np.where(qi >= 0, a_bid[np.maximum(qi, 0)] if m else state.bid, state.bid)
    sask = np.where(qi >= 0, a_ask[np.maximum(qi, 0)] if m else state.ask, state.ask)
    mid_s = (sbid + sask) / 2.0 / units
    prem_level = state.premium_level + rng.normal(0, 0.0006) * math.sqrt(dur / DAY_MS)
    prem_level = float(np.clip(prem_level, -0.002, 0.003))
    prem_min = np.empty(n_min)
    p = state.premium
    eps = rng.normal(0, 0.00008, n_min)
    for j in range(n_min):
        p = p + 0.05 * (prem_level - p) + eps[j]
        prem_min[j] = p
    premium_end = p
    prem_s = prem_min[np.minimum((sec_t - t0) // MINUTE_MS, n_min - 1)] + rng.normal(0, 0.00002, n_sec)
    mark = mid_s * (1.0 + rng.normal(0, 0.00003, n_sec))
    index = mark / (1.0 + prem_s)

    # funding intervals: cumulative mean premium within each 8-hour interval
    interval = sec_t // FUNDING_MS
    first_interval = state.fund_start // FUNDING_MS
    csum = np.cumsum(prem_s)
    cnt = np.arange(1, n_sec + 1, dtype=np.float64)
    # reset the running sums at interval boundaries
    boundary = np.flatnonzero(np.diff(interval)) + 1
    base_sum = np.zeros(n_sec)
    base_cnt = np.zeros(n_sec)
    if len(boundary):
        seg_id = np.searchsorted(boundary, np.arange(n_sec), side="right")
        starts_sum = np.concatenate(([0.0], csum[boundary - 1]))
        starts_cnt = np.concatenate(([0.0], cnt[boundary - 1]))
        base_sum = starts_sum[seg_id]
        base_cnt = starts_cnt[seg_id]
    carry = interval == first_interval
    run_sum = csum - base_sum + np.where(carry, state.fund_sum, 0.0)
    run_cnt = cnt - base_cnt + np.where(carry, state.fund_n, 0)
    est_rate = funding_from_premium(run_sum / run_cnt)
    # settlements at boundaries inside (t0, t1]: rate of the interval that just ended
    f_times = np.arange((t0 // FUNDING_MS + 1) * FUNDING_MS, t1 + 1, FUNDING_MS, dtype=np.int64)
    f_idx = np.searchsorted(sec_t, f_times, side="left") - 1  # last second of the ended interval
    f_rates = est_rate[f_idx] if len(f_idx) else np.zeros(0)
    f_mark = mark[f_idx] if len(f_idx) else np.zeros(0)
    last_interval = interval[-1]
    fund_start = int(last_interval * FUNDING_MS)
    fund_sum = float(run_sum[-1])
    fund_n = int(run_cnt[-1])
    if t1 % FUNDING_MS == 0:  # the segment ends exactly on a settlement
        fund_start, fund_sum, fund_n = t1, 0.0, 0

    # --- open interest per minute: log random walk, rising with volatility
    mret = np.zeros(n_min)
    mq = np.searchsorted(aT, np.minimum(minute_t + MINUTE_MS, t1) - 1, side="right") - 1
    m_mid = np.where(mq >= 0, (a_bid[np.maximum(mq, 0)] + a_ask[np.maximum(mq, 0)]) / 2.0 if m else 0, 0)
    m_mid = np.where(mq >= 0, m_mid, (state.bid + state.ask) / 2.0)
    prev_mid = np.concatenate((([(state.bid + state.ask) / 2.0]), m_mid[:-1]))
    mret = np.log(m_mid / prev_mid)
    z = mret / sigma_min
    oi_incr = rng.normal(0, 0.0015, n_min) + 0.0008 * (np.abs(z) - 0.8) - 0.004 * np.maximum(np.abs(z) - 3, 0)
    log_oi = state.log_oi + np.cumsum(oi_incr)
    log_oi = np.clip(log_oi, state.log_oi - 1.5, state.log_oi + 1.5)
    oi = np.round(np.exp(log_oi), spec.qty_decimals)

    # --- liquidations: bursts around large moves, side against the move
    liq_n = rng.poisson(np.maximum(np.abs(z) - 1.8, 0.0) * 3.0 + 0.03 * (minute_len / MINUTE_MS))
    n_liq = int(liq_n.sum())
    liq_min = np.repeat(np.arange(n_min), liq_n)
    liq_T = np.sort(minute_t[liq_min] + (rng.random(n_liq) * minute_len[liq_min]).astype(np.int64))
    liq_min = np.minimum((liq_T - t0) // MINUTE_MS, n_min - 1)
    liq_sell = np.where(mret[liq_min] != 0, mret[liq_min] < 0, rng.random(n_liq) < 0.5)
    liq_qty = (
        np.clip(
            np.ceil(spec.median_lots * 2 * (1 + rng.pareto(1.2, n_liq))), 1, spec.median_lots * 50_000
        ).astype(np.int64)
        * spec.step
    )
    lq = np.searchsorted(aT, liq_T, side="right") - 1
    ref = np.where(lq >= 0, a_px[np.maximum(lq, 0)] if m else state.bid, state.bid)
    slip = np.round(ref * rng.uniform(0.001, 0.006, n_liq) / tick).astype(np.int64) * tick
    liq_price = np.where(liq_sell, ref - slip, ref + slip)
    liq_price = np.maximum(liq_price, tick)
    liq_avg = np.where(liq_sell, liq_price + slip // 2 // tick * tick, liq_price - slip // 2 // tick * tick)

    end = MarketState(
        t_ms=t1,
        agg_id=state.agg_id + m,
        trade_id=int(a_last[-1]) + 1 if m else state.trade_id,
        log_mid=float(log_mid[-1]) if n else state.log_mid,
        bid=int(a_bid[-1]) if m else state.bid,
        ask=int(a_ask[-1]) if m else state.ask,
        var=float(var_end),
        premium=float(premium_end),
        premium_level=prem_level,
        log_oi=float(log_oi[-1]),
        fund_start=fund_start,
        fund_sum=fund_sum,
        fund_n=fund_n,
    )
    return Segment(
        t0=t0,
        t1=t1,
        start=state,
        end=end,
        agg_id0=state.agg_id,
        T=aT.astype(np.int64),
        price=a_px.astype(np.int64),
        qty=a_qty.astype(np.int64),
        first=a_first.astype(np.int64),
        last=a_last.astype(np.int64),
        maker=a_maker.astype(bool),
        bid=a_bid.astype(np.int64),
        ask=a_ask.astype(np.int64),
        mark=mark,
        index=index,
        premium=prem_s,
        est_rate=est_rate,
        oi=oi,
        funding_T=f_times,
        funding_rate=f_rates,
        funding_mark=f_mark,
        liq_T=liq_T,
        liq_sell=liq_sell,
        liq_qty=liq_qty,
        liq_price=liq_price,
        liq_avg=liq_avg,
    )


@dataclass
class Trades:
    """A run of aggregate trades (columns), e.g. one REST page or one archive day."""

    a: np.ndarray
    T: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    first: np.ndarray
    last: np.ndarray
    maker: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    @staticmethod
    def concat(parts: list[Trades]) -> Trades:
        if not parts:
            z = np.zeros(0, np.int64)
            return Trades(z, z, z, z, z, z, np.zeros(0, bool))
        if len(parts) == 1:
            return parts[0]
        return Trades(*(np.concatenate([getattr(p, f) for p in parts]) for f in Trades.FIELDS))

    FIELDS = ("a", "T", "price", "qty", "first", "last", "maker")


def _seg_trades(seg: Segment, i0: int, i1: int) -> Trades:
    return Trades(
        np.arange(seg.agg_id0 + i0, seg.agg_id0 + i1, dtype=np.int64),
        seg.T[i0:i1],
        seg.price[i0:i1],
        seg.qty[i0:i1],
        seg.first[i0:i1],
        seg.last[i0:i1],
        seg.maker[i0:i1],
    )


_SEG_ARRAYS = [
    "T",
    "price",
    "qty",
    "first",
    "last",
    "maker",
    "bid",
    "ask",
    "mark",
    "index",
    "premium",
    "est_rate",
    "oi",
    "funding_T",
    "funding_rate",
    "funding_mark",
    "liq_T",
    "liq_sell",
    "liq_qty",
    "liq_price",
    "liq_avg",
]


class SymbolMarket:
    """All segments of one symbol, generated lazily and chained from an origin time.

    Segments: one per day [day, day+1) at the history rate; with a live rate, today is cut at
    `live_start` and continues in short chunks at the live rate.
    """

    def __init__(
        self,
        spec: SymbolSpec,
        seed: int,
        trades_per_day: int,
        origin_ms: int,
        live_start_ms: int,
        live_rate: float | None = None,
        store_dir: object | None = None,
        store_key: str = "",
    ) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.seed = seed
        self.origin_ms = origin_ms
        self.live_start_ms = live_start_ms
        self.hist_rate = trades_per_day * spec.activity / 86_400.0
        self.live_rate = live_rate
        self.store_dir = store_dir
        self.store_key = store_key
        self.segments: list[Segment] = []
        self._t0s: list[int] = []
        self._id0s: list[int] = []
        self._state = initial_state(spec, seed, origin_ms)
        if live_rate:
            self.chunk_ms = int(max(1.0, min(60.0, 100_000 / live_rate))) * 1000
        else:
            self.chunk_ms = DAY_MS

    # ---- generation
    @property
    def end_ms(self) -> int:
        return self._state.t_ms

    def _next_bounds(self, t0: int) -> tuple[int, float, bool]:
        day_end = (t0 // DAY_MS + 1) * DAY_MS
        if self.live_rate:
            if t0 < self.live_start_ms < day_end:
                return self.live_start_ms, self.hist_rate, False
            if t0 >= self.live_start_ms:
                return min(t0 + self.chunk_ms, day_end), self.live_rate, False
        cacheable = day_end <= self.live_start_ms or not self.live_rate
        return day_end, self.hist_rate, cacheable

    def ensure(self, t_ms: int) -> None:
        """Generate segments until the market covers t_ms."""
        while self.end_ms <= t_ms:
            t0 = self.end_ms
            t1, rate, cacheable = self._next_bounds(t0)
            seg = self._load(t0, t1) if cacheable else None
            if seg is None:
                seg = generate_segment(self.spec, self.seed, self._state, t1, rate)
                if cacheable:
                    self._save(seg)
            self.segments.append(seg)
            self._t0s.append(seg.t0)
            self._id0s.append(seg.agg_id0)
            self._state = seg.end

    def _path(self, t0: int):  # type: ignore[no-untyped-def]
        from pathlib import Path

        return Path(str(self.store_dir)) / f"{self.store_key}-{t0}.npz"

    def _save(self, seg: Segment) -> None:
        if self.store_dir is None or seg.n < 200_000:  # small days regenerate faster than they load
            return
        import json
        from dataclasses import asdict

        path = self._path(seg.t0)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                end=np.frombuffer(json.dumps(asdict(seg.end)).encode(), np.uint8),
                **{k: getattr(seg, k) for k in _SEG_ARRAYS},
            )
            tmp.replace(path)
        except OSError as exc:  # a cache is an optimisation
            log.warning("segment cache write failed: %s", exc)

    def _load(self, t0: int, t1: int) -> Segment | None:
        if self.store_dir is None:
            return None
        import json

        path = self._path(t0)
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in _SEG_ARRAYS}
                end = MarketState(**json.loads(bytes(z["end"]).decode()))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("segment cache read failed: %s", exc)
            return None
        return Segment(t0=t0, t1=t1, start=self._state, end=end, agg_id0=self._state.agg_id, **arrays)

    # ---- lookups
    def _seg_index_time(self, t: int) -> int:
        import bisect

        return max(bisect.bisect_right(self._t0s, t) - 1, 0)

    def first_id(self) -> int:
        return self.segments[0].agg_id0 if self.segments else self._state.agg_id

    def trades_from_id(self, from_id: int, limit: int, now: int) -> Trades:
        import bisect

        parts: list[Trades] = []
        from_id = max(from_id, self.first_id())
        k = max(bisect.bisect_right(self._id0s, from_id) - 1, 0)
        while limit > 0 and k < len(self.segments):
            seg = self.segments[k]
            i0 = from_id - seg.agg_id0
            if i0 < seg.n:
                i_now = int(np.searchsorted(seg.T, now, side="right"))
                i1 = min(seg.n, i0 + limit, i_now)
                if i1 > i0:
                    parts.append(_seg_trades(seg, i0, i1))
                    limit -= i1 - i0
                    from_id += i1 - i0
                if i1 < seg.n:
                    break
            else:
                from_id = seg.agg_id_end
            k += 1
        return Trades.concat(parts)

    def trades_between(self, t0: int, t1: int, limit: int | None = None) -> Trades:
        """Trades with t0 <= T < t1 (at most `limit`, earliest first)."""
        parts: list[Trades] = []
        k = self._seg_index_time(t0)
        while k < len(self.segments) and self.segments[k].t0 < t1:
            seg = self.segments[k]
            i0 = int(np.searchsorted(seg.T, t0, side="left"))
            i1 = int(np.searchsorted(seg.T, t1, side="left"))
            if limit is not None:
                i1 = min(i1, i0 + limit)
            if i1 > i0:
                parts.append(_seg_trades(seg, i0, i1))
                if limit is not None:
                    limit -= i1 - i0
                    if limit <= 0:
                        break
            k += 1
        return Trades.concat(parts)

    def trades_last(self, limit: int, now: int) -> Trades:
        parts: list[Trades] = []
        k = self._seg_index_time(now)
        while limit > 0 and k >= 0:
            seg = self.segments[k]
            i1 = int(np.searchsorted(seg.T, now, side="right"))
            i0 = max(0, i1 - limit)
            if i1 > i0:
                parts.append(_seg_trades(seg, i0, i1))
                limit -= i1 - i0
            k -= 1
        return Trades.concat(parts[::-1])

    def trade_index_after(self, t: int) -> tuple[int, int]:
        """(segment index, row) of the first trade with T > t."""
        k = self._seg_index_time(t)
        seg = self.segments[k]
        return k, int(np.searchsorted(seg.T, t, side="right"))

    def quote_at(self, t: int) -> tuple[int, int]:
        """Best bid and ask (price units) in force at time t."""
        k = self._seg_index_time(t)
        seg = self.segments[k]
        i = int(np.searchsorted(seg.T, t, side="right")) - 1
        if i < 0:
            return seg.start.bid, seg.start.ask
        return int(seg.bid[i]), int(seg.ask[i])

    def second_at(self, t: int) -> tuple[Segment, int]:
        k = self._seg_index_time(t)
        seg = self.segments[k]
        i = min(max((t - seg.t0) // 1000, 0), len(seg.mark) - 1)
        return seg, int(i)

    def oi_at(self, t: int) -> float:
        k = self._seg_index_time(t)
        seg = self.segments[k]
        j = (t - seg.t0) // MINUTE_MS
        if j < 0:
            return math.exp(seg.start.log_oi)
        return float(seg.oi[min(j, len(seg.oi) - 1)])

    def series(self, t0: int, t1: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-second values of mark/index/premium/est_rate for seconds in [t0, t1)."""
        ts, vs = [], []
        k = self._seg_index_time(t0)
        while k < len(self.segments) and self.segments[k].t0 < t1:
            seg = self.segments[k]
            st = seg.t0 + 1000 * np.arange(len(seg.mark), dtype=np.int64)
            sel = (st >= t0) & (st < t1)
            ts.append(st[sel])
            vs.append(getattr(seg, name)[sel])
            k += 1
        if not ts:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(ts), np.concatenate(vs)

    def oi_series(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        ts, vs = [], []
        k = self._seg_index_time(t0)
        while k < len(self.segments) and self.segments[k].t0 < t1:
            seg = self.segments[k]
            st = seg.t0 + MINUTE_MS * np.arange(len(seg.oi), dtype=np.int64)
            sel = (st >= t0) & (st < t1)
            ts.append(st[sel])
            vs.append(seg.oi[sel])
            k += 1
        if not ts:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(ts), np.concatenate(vs)

    def fundings(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Settlements with t0 <= time < t1."""
        T, r, mk = [], [], []
        for seg in self.segments:
            sel = (seg.funding_T >= t0) & (seg.funding_T < t1)
            T.append(seg.funding_T[sel])
            r.append(seg.funding_rate[sel])
            mk.append(seg.funding_mark[sel])
        if not T:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        return np.concatenate(T), np.concatenate(r), np.concatenate(mk)

    def liquidations(self, t0: int, t1: int) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in ("T", "sell", "qty", "price", "avg")}
        k = self._seg_index_time(t0)
        while k < len(self.segments) and self.segments[k].t0 < t1:
            seg = self.segments[k]
            sel = (seg.liq_T >= t0) & (seg.liq_T < t1)
            out["T"].append(seg.liq_T[sel])
            out["sell"].append(seg.liq_sell[sel])
            out["qty"].append(seg.liq_qty[sel])
            out["price"].append(seg.liq_price[sel])
            out["avg"].append(seg.liq_avg[sel])
            k += 1
        return {
            key: (np.concatenate(v) if v else np.zeros(0, bool if key == "sell" else np.int64))
            for key, v in out.items()
        }
