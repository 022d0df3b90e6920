"""What only the archive can heal: aggregate trades the live paths (websocket and REST) withhold or
serve with another price than the day's archive, and archives re-uploaded with one row changed.

The choice is a hash of (seed, aggregate id), so the websocket and REST agree on which ids they
withhold or change, and the archive (built from the unchanged market) holds them all as they are.
"""

from __future__ import annotations

import numpy as np

from microstructure.exchange.config import FaultConfig
from microstructure.exchange.market import Trades, uniform_hash

WITHHOLD_SALT = 9101
DIFFER_SALT = 9102
REUPLOAD_SALT = 9103


def withheld(ids: np.ndarray, seed: int, faults: FaultConfig) -> np.ndarray:
    """Which of `ids` the websocket and REST do not serve."""
    if not faults.withhold_agg_trades:
        return np.zeros(len(ids), dtype=bool)
    return uniform_hash(np.asarray(ids, dtype=np.int64), seed, WITHHOLD_SALT) < faults.withhold_agg_trades


def differing(ids: np.ndarray, seed: int, faults: FaultConfig) -> np.ndarray:
    """Which of `ids` the websocket and REST serve one price tick above the archive's price."""
    if not faults.differ_agg_trades:
        return np.zeros(len(ids), dtype=bool)
    return uniform_hash(np.asarray(ids, dtype=np.int64), seed, DIFFER_SALT) < faults.differ_agg_trades


def live_active(faults: FaultConfig) -> bool:
    return bool(faults.withhold_agg_trades or faults.differ_agg_trades)


def live_view(tr: Trades, seed: int, faults: FaultConfig, tick: int = 1) -> Trades:
    """The trades as the websocket and REST serve them: withheld ids left out, differing prices one
    tick (`tick`, in price units) up."""
    if not live_active(faults) or not len(tr):
        return tr
    keep = ~withheld(tr.a, seed, faults)
    price = tr.price + differing(tr.a, seed, faults).astype(tr.price.dtype) * tick
    return Trades(
        tr.a[keep], tr.T[keep], price[keep], tr.qty[keep], tr.first[keep], tr.last[keep], tr.maker[keep]
    )


def reupload_row(n: int, seed: int, revision: int) -> int:
    """The row a re-upload of revision `revision` changes, of an archive of `n` rows."""
    return int(uniform_hash(np.int64(revision), seed, REUPLOAD_SALT) * n) if n else 0


def reupload_trades(tr: Trades, seed: int, revision: int) -> Trades:
    """An aggTrades archive's rows after `revision` re-uploads: each changed one quantity by one lot."""
    if revision <= 0 or not len(tr):
        return tr
    qty = tr.qty.copy()
    for r in range(1, revision + 1):
        qty[reupload_row(len(tr), seed, r)] += 1
    return Trades(tr.a, tr.T, tr.price, qty, tr.first, tr.last, tr.maker)


def reupload_values(values: np.ndarray, seed: int, revision: int, factor: float = 1.01) -> np.ndarray:
    """A bookDepth depth or metrics open-interest column after `revision` re-uploads: each scaled one
    row by `factor`."""
    if revision <= 0 or not len(values):
        return values
    out = np.array(values, dtype=np.float64, copy=True)
    for r in range(1, revision + 1):
        out[reupload_row(len(out), seed, r)] *= factor
    return out
