"""Per-snapshot book values: the vectorised batch computation against a plain per-row reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from microstructure.ingest.collectors.book_values import (
    VALUE_COLUMNS,
    BookValues,
    Level1,
    compute_book_values,
    pad_levels,
)


def reference(books: list[tuple[list, list]], prev: tuple | None = None) -> pd.DataFrame:
    """Straight from FEATURES.md, one row at a time, in plain Python (None for undefined)."""
    rows = []

    def div(a, b):
        if a is None or b is None or b == 0:
            return None
        return a / b

    for bids, asks in books:
        r: dict[str, float | None] = {}
        b1, bq1 = bids[0] if bids else (None, None)
        a1, aq1 = asks[0] if asks else (None, None)
        if bids and asks:
            mid = (b1 + a1) / 2
            r["mid"], r["spread"] = mid, a1 - b1
            r["spread_bps"] = div(a1 - b1, mid) * 1e4 if div(a1 - b1, mid) is not None else None
            wmid = div(b1 * aq1 + a1 * bq1, bq1 + aq1)
            r["weighted_mid_diff_bps"] = None if wmid is None or mid == 0 else (wmid - mid) / mid * 1e4
        else:
            mid = None
            r.update(mid=None, spread=None, spread_bps=None, weighted_mid_diff_bps=None)
        for k in (5, 10, 20):
            sb = sum(q for _, q in bids[:k])
            sa = sum(q for _, q in asks[:k])
            r[f"imbalance_{k}"] = div(sb - sa, sb + sa)
        sb20 = sum(q for _, q in bids[:20])
        sa20 = sum(q for _, q in asks[:20])
        r["bid_slope"] = div(sb20, mid - bids[:20][-1][0]) if mid is not None else None
        r["ask_slope"] = div(sa20, asks[:20][-1][0] - mid) if mid is not None else None
        r["bid_vol_ratio_5_20"] = div(sum(q for _, q in bids[:5]), sb20)
        r["ask_vol_ratio_5_20"] = div(sum(q for _, q in asks[:5]), sa20)
        if prev is not None and None not in prev and bids and asks:
            pb, pbq, pa, paq = prev
            e = 0.0
            if b1 >= pb:
                e += bq1
            if b1 <= pb:
                e -= pbq
            if a1 <= pa:
                e -= aq1
            if a1 >= pa:
                e += paq
            r["ofi"] = e
        else:
            r["ofi"] = None
        prev = (b1, bq1, a1, aq1)
        rows.append(r)
    return pd.DataFrame(rows, columns=list(VALUE_COLUMNS), dtype=float)


def to_arrays(books):
    bids = [[list(lv) for lv in b] for b, _ in books]
    asks = [[list(lv) for lv in a] for _, a in books]
    bp, bq = pad_levels(bids)
    ap, aq = pad_levels(asks)
    return bp, bq, ap, aq


@st.composite
def book(draw):
    """A book with 0..25 levels a side (top 20 used), prices around 100 on a 0.5 grid, sometimes equal
    to the previous book's level 1 so that every OFI branch is reached."""
    mid_tick = draw(st.integers(180, 220))
    nb = draw(st.integers(0, 25))
    na = draw(st.integers(0, 25))
    gap = draw(st.integers(1, 3))
    qty = st.floats(0.001, 1000, allow_nan=False, allow_infinity=False)
    bids = [((mid_tick - i) * 0.5, draw(qty)) for i in range(nb)]
    asks = [((mid_tick + gap + i) * 0.5, draw(qty)) for i in range(na)]
    return bids, asks


@settings(max_examples=150, deadline=None)
@given(st.lists(book(), min_size=1, max_size=12), st.integers(1, 5))
def test_values_match_reference(books, n_batches) -> None:
    want = reference(books)
    bv = BookValues()
    parts = []
    cuts = np.linspace(0, len(books), n_batches + 1).astype(int)
    for i0, i1 in itertools.pairwise(cuts):
        if i1 > i0:
            parts.append(pd.DataFrame(bv.compute("X", *to_arrays(books[i0:i1]))))
    got = pd.concat(parts, ignore_index=True)
    for col in VALUE_COLUMNS:
        np.testing.assert_allclose(
            got[col].to_numpy(), want[col].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=col
        )


def test_first_snapshot_has_no_ofi_and_state_carries() -> None:
    b1 = ([(100.0, 2.0), (99.5, 1.0)], [(100.5, 3.0)])
    b2 = ([(100.5, 1.0)], [(101.0, 4.0), (101.5, 1.0)])
    values, state = compute_book_values(*to_arrays([b1]))
    assert math.isnan(values["ofi"][0])
    assert state == Level1(100.0, 2.0, 100.5, 3.0)
    values, _ = compute_book_values(*to_arrays([b2]), prev=state)
    # bid up: +1.0; ask up: + prev ask qty 3.0
    assert values["ofi"][0] == 4.0
    assert values["mid"][0] == 100.75 and values["spread"][0] == 0.5
    assert values["bid_slope"][0] == 1.0 / 0.25
    assert values["ask_slope"][0] == 5.0 / (101.5 - 100.75)
    assert values["imbalance_5"][0] == (1.0 - 5.0) / 6.0
    assert values["ask_vol_ratio_5_20"][0] == 1.0


def test_exact_example_from_definitions() -> None:
    bids = [(10.0 - 0.1 * i, float(i + 1)) for i in range(20)]
    asks = [(10.1 + 0.1 * i, 2.0) for i in range(20)]
    v, _ = compute_book_values(*to_arrays([(bids, asks)]))
    mid = 10.05
    assert math.isclose(v["mid"][0], mid)
    assert math.isclose(v["spread_bps"][0], 0.1 / mid * 1e4)
    wmid = (10.0 * 2.0 + 10.1 * 1.0) / 3.0
    assert math.isclose(v["weighted_mid_diff_bps"][0], (wmid - mid) / mid * 1e4)
    assert math.isclose(v["imbalance_5"][0], (15 - 10) / 25)
    assert math.isclose(v["imbalance_20"][0], (210 - 40) / 250)
    assert math.isclose(v["bid_slope"][0], 210 / (mid - bids[19][0]))
    assert math.isclose(v["ask_slope"][0], 40 / (asks[19][0] - mid))
    assert math.isclose(v["bid_vol_ratio_5_20"][0], 15 / 210)
    assert math.isclose(v["ask_vol_ratio_5_20"][0], 0.25)
