"""Diff-stream local books: injected sequence breaks are detected, only that symbol resyncs, and every
sampled top-20 book equals the exchange's true book at the same update id."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict

from ib_helpers import exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.exchange import LocalExchange
from microstructure.exchange.book import book_at
from microstructure.exchange.rest import fmt_units
from microstructure.ingest.book import collect_book_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def true_top20(market, T: int):
    book = book_at(market, T // 50)
    pd_, qd = market.spec.price_decimals, market.spec.qty_decimals

    def side(s):
        px = [float(fmt_units(p, pd_)) for p in s.prices[:20].tolist()]
        qty = [float(fmt_units(q, qd)) for q in s.qty[:20].tolist()]
        return px, qty

    return book.update_id, side(book.bids), side(book.asks)


def run_diff(db_url, cache, tmp_path, *, drop=None, faults=None, seconds=6.0):
    received = defaultdict(list)  # symbol -> [(U, u, pu)] as the collector received them

    def message_filter(stream, data):
        sym = stream.split("@")[0].upper()
        n = len(received[sym])
        if drop and n in drop.get(sym, ()):  # this event never reaches the collector
            received[sym].append(None)
            return False
        received[sym].append((data["U"], data["u"], data["pu"]))
        return True

    async def go():
        async with LocalExchange(exchange_config(cache, live_rate=20.0)) as ex:
            if faults:
                for k, v in faults.items():
                    setattr(ex.config.faults, k, v)
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            report = await collect_book_live(
                settings,
                db_url,
                SYMBOLS,
                source="diff",
                live_seconds=seconds,
                writer=writer,
                message_filter=message_filter,
            )
            await writer.close()
            rows = await fetch_all(db_url, "SELECT * FROM book_snapshots ORDER BY symbol, last_update_id")
            events = await fetch_all(db_url, "SELECT * FROM ingest_events WHERE kind = 'resync' ORDER BY id")
            truth = {
                (r["symbol"], r["last_update_id"]): true_top20(ex.markets[r["symbol"]], ms(r["ts"]))
                for r in rows
            }
            return report, rows, events, truth

    report, rows, events, truth = asyncio.run(go())
    return report, rows, events, truth, received


def check_books(rows, truth) -> None:
    assert rows and {r["source"] for r in rows} == {"diff"}
    for r in rows:
        uid, (bp, bq), (ap, aq) = truth[(r["symbol"], r["last_update_id"])]
        assert uid == r["last_update_id"]
        assert (r["bid_px"], r["bid_qty"], r["ask_px"], r["ask_qty"]) == (bp, bq, ap, aq), r["symbol"]


def test_injected_breaks_resync_only_that_symbol(db_url, ib_cache, tmp_path) -> None:
    report, rows, events, truth, _received = run_diff(
        db_url, ib_cache, tmp_path, drop={"BTCUSDT": (15, 32)}, seconds=6.0
    )
    assert dict(report.resyncs) == {"BTCUSDT": 2}
    assert [e["symbol"] for e in events] == ["BTCUSDT", "BTCUSDT"]
    check_books(rows, truth)
    for sym in SYMBOLS:
        n = sum(1 for r in rows if r["symbol"] == sym)
        assert n >= 6, (sym, n)  # about one sample per 500 ms once synced
    # the samples are 500 ms apart and each is the latest update id at its time
    eth = [r for r in rows if r["symbol"] == "ETHUSDT"]
    assert all(b["last_update_id"] > a["last_update_id"] for a, b in itertools.pairwise(eth))


def test_exchange_dropped_events_are_detected(db_url, ib_cache, tmp_path) -> None:
    report, rows, events, truth, received = run_diff(
        db_url, ib_cache, tmp_path, faults={"ws_break_depth": 0.04}, seconds=6.0
    )
    raw_breaks = set()
    late_breaks = set()  # breaks while the book was synced (1 s after the start or a resync)
    for sym, seq in received.items():
        last_break = 0
        for i in range(1, len(seq)):
            a, b = seq[i - 1], seq[i]
            if b[2] != a[1]:
                raw_breaks.add((sym, a[1], b[2]))
                # a break while the book is (re)syncing can fall before the new snapshot: harmless
                if i > 10 and i - last_break > 10:
                    late_breaks.add((sym, a[1], b[2]))
                last_break = i
    assert late_breaks, "the fault injected no break; raise ws_break_depth"
    recorded = set()
    for e in events:
        d = json.loads(e["detail"])
        recorded.add((e["symbol"], d["expected_pu"], d["pu"]))
    assert late_breaks <= recorded <= raw_breaks  # every break detected, nothing else called one
    assert sum(report.resyncs.values()) == len(events)
    check_books(rows, truth)  # no break went unnoticed into a stored book
