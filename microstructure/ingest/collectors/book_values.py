"""Per-snapshot book values (FEATURES.md, Book section), computed for a whole batch at once.

Input: four n x 20 float arrays (bid_px, bid_qty, ask_px, ask_qty), level 1 = best, NaN-padded at
the end of a side that has fewer than 20 levels. Output: one float64 array per value, NaN where the
value is undefined (the writer stores NULL):

    mid, spread, spread_bps        from level 1 (NaN when a side is empty)
    weighted_mid_diff_bps          (wmid - mid) / mid * 1e4, wmid = (b1*aq1 + a1*bq1) / (bq1 + aq1)
    imbalance_5/_10/_20            (sum bid qty top N - sum ask qty top N) / (both sums added)
    bid_slope, ask_slope           sum qty top 20 / distance from mid to the deepest level present
    bid/ask_vol_ratio_5_20         sum qty top 5 / sum qty top 20
    ofi                            level-1 Cont-Kukanov-Stoikov term against the previous snapshot

"Top N" sums use the levels present when a side has fewer than N. The OFI of a batch's first row
uses the previous level-1 state passed in (carried across batches per symbol by `BookValues`); the
first snapshot ever seen for a symbol has no OFI (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVELS = 20
VALUE_COLUMNS = (
    "mid",
    "spread",
    "spread_bps",
    "weighted_mid_diff_bps",
    "imbalance_5",
    "imbalance_10",
    "imbalance_20",
    "bid_slope",
    "ask_slope",
    "bid_vol_ratio_5_20",
    "ask_vol_ratio_5_20",
    "ofi",
)


@dataclass(frozen=True)
class Level1:
    """Level-1 state of a snapshot: what the next snapshot's OFI term needs."""

    bid_px: float
    bid_qty: float
    ask_px: float
    ask_qty: float


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or either is NaN."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=(den != 0) & ~np.isnan(den))
    return out


def _deepest(px: np.ndarray) -> np.ndarray:
    """Price of the deepest level present (NaN when the side is empty)."""
    n = px.shape[0]
    count = (~np.isnan(px)).sum(axis=1)
    idx = np.maximum(count - 1, 0)
    out = px[np.arange(n), idx] if px.shape[1] else np.full(n, np.nan)
    return np.where(count > 0, out, np.nan)


def compute_book_values(
    bid_px: np.ndarray,
    bid_qty: np.ndarray,
    ask_px: np.ndarray,
    ask_qty: np.ndarray,
    prev: Level1 | None = None,
) -> tuple[dict[str, np.ndarray], Level1 | None]:
    """Values of every row of a batch (one symbol, time order) and the batch's last level-1 state.

    `prev` is the level 1 of the snapshot before the batch's first row (None: the first row gets no
    OFI). The returned state is the last row's level 1. A row whose level 1 or whose previous row's
    level 1 misses a side has no OFI (NaN).
    """
    bp = np.asarray(bid_px, dtype=np.float64).reshape(len(bid_px), -1)
    bq = np.asarray(bid_qty, dtype=np.float64).reshape(bp.shape)
    ap = np.asarray(ask_px, dtype=np.float64).reshape(len(ask_px), -1)
    aq = np.asarray(ask_qty, dtype=np.float64).reshape(ap.shape)
    n = bp.shape[0]
    if n == 0:
        return {c: np.zeros(0) for c in VALUE_COLUMNS}, prev
    nan = np.full(n, np.nan)
    b1 = bp[:, 0] if bp.shape[1] else nan
    a1 = ap[:, 0] if ap.shape[1] else nan
    bq1 = bq[:, 0] if bq.shape[1] else nan
    aq1 = aq[:, 0] if aq.shape[1] else nan

    with np.errstate(invalid="ignore", divide="ignore"):
        mid = (b1 + a1) / 2.0
        spread = a1 - b1
        spread_bps = _div(spread, mid) * 1e4
        wmid = _div(b1 * aq1 + a1 * bq1, bq1 + aq1)
        wmd_bps = _div(wmid - mid, mid) * 1e4

        # cumulative quantities over levels present (NaN padding counts as 0)
        cb = np.cumsum(np.nan_to_num(bq[:, :LEVELS], nan=0.0), axis=1)
        ca = np.cumsum(np.nan_to_num(aq[:, :LEVELS], nan=0.0), axis=1)

        def top(c: np.ndarray, k: int) -> np.ndarray:
            if c.shape[1] == 0:
                return np.zeros(n)
            return c[:, min(k, c.shape[1]) - 1]

        values: dict[str, np.ndarray] = {
            "mid": mid,
            "spread": spread,
            "spread_bps": spread_bps,
            "weighted_mid_diff_bps": wmd_bps,
        }
        for k in (5, 10, 20):
            sb, sa = top(cb, k), top(ca, k)
            values[f"imbalance_{k}"] = _div(sb - sa, sb + sa)
        sb20, sa20 = top(cb, LEVELS), top(ca, LEVELS)
        values["bid_slope"] = _div(np.where(np.isnan(mid), np.nan, sb20), mid - _deepest(bp[:, :LEVELS]))
        values["ask_slope"] = _div(np.where(np.isnan(mid), np.nan, sa20), _deepest(ap[:, :LEVELS]) - mid)
        values["bid_vol_ratio_5_20"] = _div(top(cb, 5), sb20)
        values["ask_vol_ratio_5_20"] = _div(top(ca, 5), sa20)

        # OFI: each row against the row before it (the batch's first row against `prev`)
        if prev is not None:
            p0 = np.array([prev.bid_px, prev.bid_qty, prev.ask_px, prev.ask_qty])
        else:
            p0 = np.full(4, np.nan)
        pb = np.concatenate(([p0[0]], b1[:-1]))
        pbq = np.concatenate(([p0[1]], bq1[:-1]))
        pa = np.concatenate(([p0[2]], a1[:-1]))
        paq = np.concatenate(([p0[3]], aq1[:-1]))
        ofi = (
            np.where(b1 >= pb, bq1, 0.0)
            - np.where(b1 <= pb, pbq, 0.0)
            - np.where(a1 <= pa, aq1, 0.0)
            + np.where(a1 >= pa, paq, 0.0)
        )
        undefined = np.isnan(b1) | np.isnan(a1) | np.isnan(pb) | np.isnan(pa)
        values["ofi"] = np.where(undefined, np.nan, ofi)

    state = Level1(float(b1[-1]), float(bq1[-1]), float(a1[-1]), float(aq1[-1]))
    return values, state


class BookValues:
    """Per-symbol OFI state across batches: `values = bv.compute("BTCUSDT", bp, bq, ap, aq)`."""

    def __init__(self) -> None:
        self.prev: dict[str, Level1] = {}

    def compute(
        self, symbol: str, bid_px: np.ndarray, bid_qty: np.ndarray, ask_px: np.ndarray, ask_qty: np.ndarray
    ) -> dict[str, np.ndarray]:
        values, state = compute_book_values(bid_px, bid_qty, ask_px, ask_qty, self.prev.get(symbol))
        if state is not None:
            self.prev[symbol] = state
        return values

    def reset(self, symbol: str) -> None:
        self.prev.pop(symbol, None)


def pad_levels(rows: list[list[list[str]]] | list[list[tuple[float, float]]], levels: int = LEVELS):
    """[[price, qty], ...] per row (strings or numbers) -> (n x levels price, n x levels qty), NaN-padded.

    One flat conversion for the whole batch (numpy parses the decimal strings).
    """
    n = len(rows)
    counts = np.fromiter((min(len(r), levels) for r in rows), dtype=np.int64, count=n)
    flat = [x for r in rows for lvl in r[:levels] for x in lvl]
    vals = np.asarray(flat, dtype=np.float64).reshape(-1, 2) if flat else np.zeros((0, 2))
    px = np.full((n, levels), np.nan)
    qty = np.full((n, levels), np.nan)
    mask = np.arange(levels)[None, :] < counts[:, None]
    px[mask] = vals[:, 0]
    qty[mask] = vals[:, 1]
    return px, qty
