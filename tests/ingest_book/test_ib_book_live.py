"""Live book collection against the local exchange: depth20 rows level for level, values checked."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
from ib_helpers import Tap, exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.exchange import LocalExchange
from microstructure.ingest.collectors.book import collect_book_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def independent_values(bids: list[list[float]], asks: list[list[float]]) -> dict[str, float]:
    """FEATURES.md's per-snapshot values for one book, with numpy, from the levels as sent."""
    b = np.array(bids, dtype=float).reshape(-1, 2)
    a = np.array(asks, dtype=float).reshape(-1, 2)
    mid = (b[0, 0] + a[0, 0]) / 2
    spread = a[0, 0] - b[0, 0]
    wmid = (b[0, 0] * a[0, 1] + a[0, 0] * b[0, 1]) / (b[0, 1] + a[0, 1])
    out = {
        "mid": mid,
        "spread": spread,
        "spread_bps": spread / mid * 1e4,
        "weighted_mid_diff_bps": (wmid - mid) / mid * 1e4,
    }
    for k in (5, 10, 20):
        sb, sa = b[:k, 1].sum(), a[:k, 1].sum()
        out[f"imbalance_{k}"] = (sb - sa) / (sb + sa)
    out["bid_slope"] = b[:20, 1].sum() / (mid - b[:20, 0][-1])
    out["ask_slope"] = a[:20, 1].sum() / (a[:20, 0][-1] - mid)
    out["bid_vol_ratio_5_20"] = b[:5, 1].sum() / b[:20, 1].sum()
    out["ask_vol_ratio_5_20"] = a[:5, 1].sum() / a[:20, 1].sum()
    return out


def ofi(prev: tuple[float, ...], cur: tuple[float, ...]) -> float:
    pb, pbq, pa, paq = prev
    b, bq, a, aq = cur
    return (bq if b >= pb else 0) - (pbq if b <= pb else 0) - (aq if a <= pa else 0) + (paq if a >= pa else 0)


def test_live_depth20_rows_match_what_the_exchange_sent(db_url, ib_cache, tmp_path) -> None:
    async def go():
        async with LocalExchange(exchange_config(ib_cache, live_rate=30.0)) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            tap = Tap(ex.ws_url, [f"{s.lower()}@depth20@500ms" for s in SYMBOLS])
            task = asyncio.create_task(
                collect_book_live(settings, db_url, SYMBOLS, live_seconds=5.0, writer=writer)
            )
            await asyncio.sleep(0.8)
            await tap.start()
            await asyncio.sleep(3.0)
            await tap.stop()
            report = await task
            await writer.close()
            return report, tap.messages

    report, sent = asyncio.run(go())
    assert len(sent) >= 10
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM book_snapshots ORDER BY symbol, last_update_id"))
    by_key = {(r["symbol"], r["last_update_id"]): r for r in rows}
    assert {r["source"] for r in rows} == {"depth20"}
    assert sum(report.rows.values()) == len(rows)
    for stream, d in sent:
        sym = stream.split("@")[0].upper()
        row = by_key[(sym, d["u"])]  # every snapshot the exchange sent while we listened is stored
        assert ms(row["ts"]) == d["T"] and ms(row["event_ts"]) == d["E"]
        assert (row["first_update_id"], row["prev_update_id"]) == (d["U"], d["pu"])
        assert row["bid_px"] == [float(p) for p, _ in d["b"]]
        assert row["bid_qty"] == [float(q) for _, q in d["b"]]
        assert row["ask_px"] == [float(p) for p, _ in d["a"]]
        assert row["ask_qty"] == [float(q) for _, q in d["a"]]
        assert row["recv_ts"] is not None and ms(row["recv_ts"]) >= d["E"] - 5
        want = independent_values(
            [[float(p), float(q)] for p, q in d["b"]], [[float(p), float(q)] for p, q in d["a"]]
        )
        for k, v in want.items():
            assert np.isclose(row[k], v, rtol=1e-12), (k, row[k], v)
    # OFI of every row against the previous row of the same symbol; NULL for each symbol's first
    for sym in SYMBOLS:
        srows = [r for r in rows if r["symbol"] == sym]
        assert len(srows) >= 6
        assert srows[0]["ofi"] is None
        for prev, cur in itertools.pairwise(srows):
            assert cur["prev_update_id"] == prev["last_update_id"]  # nothing missed in between
            p = (prev["bid_px"][0], prev["bid_qty"][0], prev["ask_px"][0], prev["ask_qty"][0])
            c = (cur["bid_px"][0], cur["bid_qty"][0], cur["ask_px"][0], cur["ask_qty"][0])
            assert np.isclose(cur["ofi"], ofi(p, c), rtol=1e-12, atol=1e-12)
