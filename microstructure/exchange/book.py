"""The order book: a stateless function of time, consistent with the trades.

At time t the best bid and ask are the quotes in force after the last trade at or before t. Every
tick below the best bid (above the best ask) holds a quantity that is a hash of (price, side, epoch),
where each price level refreshes its quantity on its own period (2..60 s): the depth moves, and any
two snapshots can be compared without keeping state. Snapshots live on a 50 ms grid k (t = 50 k);
update id u(k) is strictly increasing, so a diff event from grid k_a to k_b has U = u(k_a) + 1,
u = u(k_b), pu = u(k_a), which follows Binance's rules for @100ms and @500ms alike; it lists every
level updated at any grid step in (k_a, k_b], so a REST snapshot taken at a step in between (the
50 ms grid is finer than the streams') joins the stream exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from microstructure.exchange.market import BOOK_LEVELS, SymbolMarket, symbol_hash, uniform_hash

GRID_MS = 50
LEVEL_BASE = 2.0  # a level holds median_lots * (BASE + SCALE * u**3) lots, u uniform
LEVEL_SCALE = 120.0
WALL = 20.0  # 2 % of levels are walls this many times larger


def update_id(k: int, seed: int = 0) -> int:
    """Update id of grid step k: strictly increasing in k, 1..8 apart."""
    return 8 * k + int(uniform_hash(np.int64(k), seed)[()] * 8)


@dataclass
class BookSide:
    prices: np.ndarray  # int64 price units, best first
    qty: np.ndarray  # int64 qty units


@dataclass
class Book:
    k: int  # grid step: snapshot at 100 * k ms
    update_id: int
    bids: BookSide
    asks: BookSide


def level_qty(market: SymbolMarket, prices: np.ndarray, side: int, t: int) -> np.ndarray:
    spec = market.spec
    key = symbol_hash(market.symbol) ^ market.seed
    ticks = prices // spec.tick
    u1 = uniform_hash(ticks, side, key, 1)
    period = (2_000 + u1 * 58_000).astype(np.int64)
    phase = (uniform_hash(ticks, side, key, 2) * period).astype(np.int64)
    epoch = (t + phase) // period
    u = uniform_hash(ticks, side, key, epoch)
    wall = uniform_hash(ticks, side, key, epoch, 3) > 0.98
    lots = np.ceil(spec.median_lots * (LEVEL_BASE + LEVEL_SCALE * u**3) * np.where(wall, WALL, 1.0))
    return lots.astype(np.int64) * spec.step


def book_at(market: SymbolMarket, k: int, levels: int = BOOK_LEVELS) -> Book:
    t = k * GRID_MS
    bid, ask = market.quote_at(t)
    tick = market.spec.tick
    j = np.arange(levels, dtype=np.int64)
    bp = bid - j * tick
    bp = bp[bp > 0]
    ap = ask + j * tick
    return Book(
        k=k,
        update_id=update_id(k, market.seed),
        bids=BookSide(bp, level_qty(market, bp, 0, t)),
        asks=BookSide(ap, level_qty(market, ap, 1, t)),
    )


def _side_diff(
    old: BookSide, new: BookSide, between: Sequence[BookSide] = ()
) -> tuple[np.ndarray, np.ndarray]:
    sides = [old, *between, new]
    prices = np.unique(np.concatenate([s.prices for s in sides]))

    def at(side: BookSide) -> np.ndarray:
        q = np.zeros(len(prices), np.int64)
        q[np.searchsorted(prices, side.prices)] = side.qty
        return q

    old_q, new_q = at(old), at(new)
    changed = old_q != new_q
    for side in between:  # a level that changed and changed back in between was updated too
        changed |= at(side) != old_q
    return prices[changed], new_q[changed]


def book_diff(
    old: Book, new: Book, between: Sequence[Book] = ()
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Levels updated from `old` to `new` (absolute quantities at `new`, 0 = removed): (bids, asks).

    `between`: the grid's books strictly between the two. A level that changed at any of them is in
    the event too, as Binance's diff events hold every level updated within [U, u]: a REST snapshot
    taken at one of those steps then joins the stream exactly."""
    bp, bq = _side_diff(old.bids, new.bids, [b.bids for b in between])
    ap, aq = _side_diff(old.asks, new.asks, [b.asks for b in between])
    return (bp[::-1], bq[::-1]), (ap, aq)


def depth_within(market: SymbolMarket, t: np.ndarray, pct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate cumulative depth (base units) and notional within pct % of mid at times t.

    The bookDepth archive reaches 5 % from mid, far beyond the 1000 levels of /fapi/v1/depth; this
    uses the mean level quantity of the same book model times the number of ticks, with noise.
    """
    spec = market.spec
    mids = np.array([sum(market.quote_at(int(x))) / 2.0 for x in t[:: len(np.unique(pct))]])
    mid = np.repeat(mids, len(np.unique(pct)))
    mean_lots = spec.median_lots * (LEVEL_BASE + LEVEL_SCALE / 4.0) * (0.98 + 0.02 * WALL)
    ticks = np.abs(pct) / 100.0 * mid / spec.tick
    noise = 0.8 + 0.4 * uniform_hash(t, (pct + 10).astype(np.int64), market.seed)
    depth = ticks * mean_lots * spec.step_size * noise
    px = mid / 10**spec.price_decimals * (1 + pct / 200.0)
    return depth, depth * px
