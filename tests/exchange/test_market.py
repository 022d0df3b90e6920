"""The generator: deterministic, consistent ids and books, realistic statistics, fast."""

from __future__ import annotations

import numpy as np

from microstructure.exchange.book import book_at, book_diff
from microstructure.exchange.config import DAY_MS, symbol_spec
from microstructure.exchange.market import SymbolMarket, Trades

ORIGIN = 19_700 * DAY_MS


def market(seed: int = 3, tpd: int = 40_000, live_rate: float | None = None) -> SymbolMarket:
    m = SymbolMarket(symbol_spec("BTCUSDT"), seed, tpd, ORIGIN, ORIGIN + 2 * DAY_MS + 3_600_000, live_rate)
    m.ensure(ORIGIN + 2 * DAY_MS + 2 * 3_600_000)
    return m


def all_trades(m: SymbolMarket) -> Trades:
    return m.trades_between(m.origin_ms, m.end_ms)


def test_same_seed_same_market_other_seed_other_market() -> None:
    a, b, c = all_trades(market(3)), all_trades(market(3)), all_trades(market(4))
    for f in Trades.FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.price[:100], c.price[:100])


def test_ids_consecutive_and_trade_ranges_contiguous_across_days_and_live_chunks() -> None:
    m = market(live_rate=5.0)
    assert len(m.segments) > 3  # two days, today's history part, live chunks
    t = all_trades(m)
    assert np.all(np.diff(t.a) == 1)
    assert np.all(t.first[1:] == t.last[:-1] + 1)
    assert np.all(t.last >= t.first)
    assert np.all(np.diff(t.T) >= 0)
    assert t.a[0] == m.first_id()
    # each day holds about the configured number of aggregate trades
    per_day = [len(m.trades_between(ORIGIN + d * DAY_MS, ORIGIN + (d + 1) * DAY_MS)) for d in range(2)]
    assert all(30_000 < n < 50_000 for n in per_day), per_day


def test_prices_on_ticks_quotes_consistent_with_trades() -> None:
    m = market()
    spec = m.spec
    for seg in m.segments:
        assert np.all(seg.price % spec.tick == 0)
        assert np.all(seg.bid < seg.ask)
        # the last trade of an aggregate printed at the bid (taker sold) or the ask (taker bought)
        at_quote = np.where(seg.maker, seg.price == seg.bid, seg.price == seg.ask)
        assert at_quote.mean() > 0.95
        assert np.all(seg.qty % spec.step == 0) and np.all(seg.qty > 0)


def test_aggregation_rule_and_statistics() -> None:
    t = all_trades(market(tpd=60_000))
    same = (t.price[1:] == t.price[:-1]) & (t.maker[1:] == t.maker[:-1])
    # neighbours with the same price and side are at least 100 ms apart or cross a 100 ms window
    assert np.mean((t.T[1:] - t.T[:-1])[same] < 100) < 0.5
    fills = t.last - t.first + 1
    assert fills.max() > 3 and fills.mean() > 1.3
    # heavy-tailed sizes
    q = t.qty.astype(float)
    assert np.percentile(q, 99.9) > 20 * np.median(q)
    # clustered arrivals: inter-arrival times far more dispersed than a Poisson process (CV > 1)
    gaps = np.diff(t.T).astype(float)
    assert gaps.std() / gaps.mean() > 1.5
    # volatility clustering: |1-minute returns| autocorrelated
    minutes = t.T // 60_000
    last = np.flatnonzero(np.append(minutes[1:] != minutes[:-1], True))
    r = np.abs(np.diff(np.log(t.price[last].astype(float))))
    assert np.corrcoef(r[1:], r[:-1])[0, 1] > 0.05


def test_book_snapshots_and_diffs() -> None:
    m = market()
    k = (ORIGIN + DAY_MS // 2) // 50
    b0, b1 = book_at(m, k), book_at(m, k + 10)
    assert len(b0.bids.prices) == 1000 and len(b0.asks.prices) == 1000
    assert b0.bids.prices[0] < b0.asks.prices[0]
    assert np.all(np.diff(b0.bids.prices) < 0) and np.all(np.diff(b0.asks.prices) > 0)
    assert b1.update_id > b0.update_id
    (bp, bq), (ap, _aq) = book_diff(b0, b1)
    assert len(bp) + len(ap) > 0  # depth moves
    # applying the diff to b0 gives b1
    bids = dict(zip(b0.bids.prices.tolist(), b0.bids.qty.tolist(), strict=True))
    for p, q in zip(bp.tolist(), bq.tolist(), strict=True):
        if q == 0:
            bids.pop(p)
        else:
            bids[p] = q
    assert bids == dict(zip(b1.bids.prices.tolist(), b1.bids.qty.tolist(), strict=True))


def test_a_snapshot_between_two_diff_events_joins_the_stream_exactly() -> None:
    """The grid (50 ms) is finer than the streams (100 ms and up): a REST snapshot can sit between two
    events. The event across it lists every level updated at any step in between, as Binance's hold
    every update within [U, u], so snapshot + event = the book after the event (without the steps in
    between, a level that appeared and went again stayed in the local book for good)."""
    m = market()
    k0 = (ORIGIN + DAY_MS // 2) // 50
    for k in range(k0, k0 + 4000, 2):  # the @100ms stream's events are at even steps
        snap = book_at(m, k + 1, 1000)
        local = {
            side: dict(
                zip(getattr(snap, side).prices.tolist(), getattr(snap, side).qty.tolist(), strict=True)
            )
            for side in ("bids", "asks")
        }
        diff = book_diff(book_at(m, k), book_at(m, k + 2), [book_at(m, k + 1)])
        for side, (px, qty) in zip(("bids", "asks"), diff, strict=True):
            for p, q in zip(px.tolist(), qty.tolist(), strict=True):
                if q == 0:
                    local[side].pop(p, None)
                else:
                    local[side][p] = q
        after = book_at(m, k + 2)
        assert sorted(local["bids"], reverse=True)[:20] == after.bids.prices[:20].tolist(), k
        assert sorted(local["asks"])[:20] == after.asks.prices[:20].tolist(), k


def test_funding_mark_oi_liquidations() -> None:
    m = market()
    T, rates, _marks = m.fundings(ORIGIN, ORIGIN + 2 * DAY_MS + 1)
    assert list(T) == [ORIGIN + i * 8 * 3_600_000 for i in range(1, 7)]
    assert np.all(np.abs(rates) <= 0.0075)
    seg, i = m.second_at(ORIGIN + DAY_MS + 12_345_678)
    bid, ask = m.quote_at(ORIGIN + DAY_MS + 12_345_678)
    mid = (bid + ask) / 2 / 100
    assert abs(seg.mark[i] / mid - 1) < 0.001 and abs(seg.index[i] / mid - 1) < 0.01
    assert m.oi_at(ORIGIN + DAY_MS) > 0
    liq = m.liquidations(ORIGIN, ORIGIN + 2 * DAY_MS)
    assert len(liq["T"]) > 10


def test_liquidations_cluster_in_large_moves_against_the_move() -> None:
    """The generator's rule: a minute holds Poisson(3 * max(|z| - 1.8, 0) + 0.03) liquidations, z the
    minute's mid return in units of the typical one-minute volatility, each on the side against the move
    (SELL, a long closed, when the price fell). Recomputed here from the quotes alone."""
    m = market()
    t0, t1 = ORIGIN, ORIGIN + 2 * DAY_MS
    sigma = m.spec.daily_vol / np.sqrt(1440)
    starts = np.arange(t0, t1, 60_000, dtype=np.int64)
    mid_end = np.array([sum(m.quote_at(int(t) + 59_999)) / 2 for t in starts])
    mid_before = np.array([sum(m.quote_at(int(t) - 1)) / 2 for t in starts])
    ret = np.log(mid_end / mid_before)
    z = np.abs(ret) / sigma
    liq = m.liquidations(t0, t1)
    minute = (liq["T"] - t0) // 60_000
    per_minute = np.bincount(minute, minlength=len(starts))
    quiet, large = z < 1.0, z >= 2.5
    assert quiet.sum() > 1000 and large.sum() > 20
    quiet_rate, large_rate = per_minute[quiet].mean(), per_minute[large].mean()
    assert quiet_rate < 0.06, quiet_rate  # the 0.03 per minute background
    assert large_rate > 2.0, large_rate  # 3 per unit of |z| above 1.8
    assert large_rate > 40 * quiet_rate
    # most liquidations fall in the few minutes with large moves
    assert per_minute[z >= 1.8].sum() > 0.6 * len(liq["T"]) and (z >= 1.8).mean() < 0.1
    # the total matches the rule's expected count (Poisson: within 4 standard deviations)
    expected = (3.0 * np.maximum(z - 1.8, 0.0) + 0.03).sum()
    assert abs(len(liq["T"]) - expected) < 4 * np.sqrt(expected)
    # side against the move in every minute that moved
    moved = ret[minute] != 0
    assert moved.sum() > 0.9 * len(moved)
    assert np.array_equal(liq["sell"][moved], ret[minute][moved] < 0)
