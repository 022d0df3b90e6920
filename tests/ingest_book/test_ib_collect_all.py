"""`collect all` for 2 symbols in its own process, connections dropped mid-run, SIGTERM at the end.

"No loss" is judged against the exchange itself, which is a function of time: the book it had at every
500 ms step (what `@depth20@500ms` sends), the mark price of every second, the liquidations it
published (natural ones and a replayed batch), every aggregate trade id. Messages sent while the
collector's connection was down cannot be recovered under Binance's rules for book snapshots, mark
prices and liquidations: those holes are allowed only inside the reconnect windows the collector
recorded. Aggregate trades must be complete (REST fills the reconnect gaps).
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import subprocess
import time

import numpy as np
from ib_helpers import collect_cmd, exchange_config

from microstructure.exchange import ExchangeThread
from microstructure.exchange.book import book_at, update_id
from microstructure.exchange.rest import fmt_units

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# A message published from this long before a recorded reconnect (queued but not yet delivered when
# the exchange aborted the connection) up to the first message received on the new connection may be
# lost; nothing outside these windows.
LAG_MS = 500


def q(dsn: str, sql: str, *args):
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args or None).fetchall()


def ms(ts) -> int:
    return int(ts.timestamp() * 1000)


def outside(times, windows) -> list[int]:
    """The times that fall in no reconnect window."""
    return [t for t in times if not any(a <= t <= b for a, b in windows)]


def test_collect_all_sigterm_flushes_everything(db_url, ib_cache, tmp_path) -> None:
    cfg = exchange_config(ib_cache, live_rate=20.0)
    cfg.faults.ws_close_random = 2.5  # every websocket is dropped after ~2.5 s on average
    thread = ExchangeThread(cfg)
    injected = []  # (publish time, {(symbol, trade T, side, price, qty)}) of replayed liquidations
    with thread as ex:
        cmd = collect_cmd(
            db_url, tmp_path, "all", "--symbol", "BTCUSDT,ETHUSDT", "--exchange-url", ex.base_url,
            "--oi-interval", "1",
        )  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while not q(db_url, "SELECT 1 FROM book_snapshots LIMIT 1"):  # collecting (startup can be slow)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.3)
        # live liquidations are rare: replay today's earlier ones through the live streams, 3 times
        history = {s: ex.markets[s].liquidations(ex.today_ms, ex.live_start_ms) for s in SYMBOLS}
        assert sum(len(h["T"]) for h in history.values()) >= 6
        for part in range(3):
            t0 = ex.today_ms + part * 4 * 3_600_000

            def publish(t0: int = t0):
                keys = [k for k in ex.hub.active() if k.kind in ("forceOrder", "forceOrderAll")]
                now = ex.now_ms()
                ex.producer.force_orders(t0, t0 + 4 * 3_600_000, now, keys)
                return now, bool(keys)

            now, subscribed = thread.call(publish)
            if subscribed:
                sent = set()
                for s in SYMBOLS:
                    h = history[s]
                    sel = np.flatnonzero((h["T"] >= t0) & (h["T"] < t0 + 4 * 3_600_000))
                    sec = h["T"][sel] // 1000
                    last_of_second = sel[np.append(sec[1:] != sec[:-1], True)] if len(sel) else sel
                    spec = ex.markets[s].spec
                    for j in last_of_second.tolist():
                        sent.add(
                            (
                                s,
                                now,
                                int(h["T"][j]),
                                "SELL" if h["sell"][j] else "BUY",
                                float(fmt_units(int(h["price"][j]), spec.price_decimals)),
                                float(fmt_units(int(h["qty"][j]), spec.qty_decimals)),
                            )
                        )
                injected.append((now, sent))
            time.sleep(1.5)
        time.sleep(2.5)
        sigterm_ms = ex.now_ms()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        wall_to_exchange = ex.clock_offset_ms
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out, out

    # the exchange did drop our connections, and they came back: each drop opens a window (exchange ms)
    # from just before the drop to the first message received after it (a receive time on a live row)
    drops = sorted(ms(r[0]) for r in q(db_url, "SELECT ts FROM ingest_events WHERE kind = 'reconnect'"))
    assert len(drops) >= 2, out
    received = sorted(
        ms(r[0])
        for table in ("agg_trades", "book_snapshots", "mark_prices")
        for r in q(db_url, f"SELECT recv_ts FROM {table} WHERE recv_ts IS NOT NULL")
    )
    windows = []
    for t in drops:
        i = bisect.bisect_right(received, t)
        back = received[i] if i < len(received) else sigterm_ms - wall_to_exchange
        assert back - t < 3_000, "a reconnect took more than 3 s"
        windows.append((t - LAG_MS + wall_to_exchange, back + wall_to_exchange))

    # the run as the exchange saw it: from the first book or mark message stored to SIGTERM
    books = q(
        db_url, "SELECT symbol, ts, last_update_id, bid_px, bid_qty, ask_px, ask_qty FROM book_snapshots"
    )
    marks = q(db_url, "SELECT symbol, ts, mark_price FROM mark_prices")
    start_ms = min([ms(r[1]) for r in books] + [ms(r[1]) // 1000 * 1000 for r in marks])
    assert sigterm_ms - start_ms >= 6_000, (start_ms, sigterm_ms)

    for sym in SYMBOLS:
        market = ex.markets[sym]
        pd_, qd = market.spec.price_decimals, market.spec.qty_decimals

        # -- book snapshots: one per 500 ms step, equal to the exchange's book at that step
        rows = {ms(r[1]): r for r in books if r[0] == sym}
        for T, r in rows.items():
            assert T % 500 == 0
            book = book_at(market, T // 50)
            assert r[2] == book.update_id == update_id(T // 50, market.seed)
            assert r[3] == [float(fmt_units(p, pd_)) for p in book.bids.prices[:20].tolist()]
            assert r[4] == [float(fmt_units(x, qd)) for x in book.bids.qty[:20].tolist()]
            assert r[5] == [float(fmt_units(p, pd_)) for p in book.asks.prices[:20].tolist()]
            assert r[6] == [float(fmt_units(x, qd)) for x in book.asks.qty[:20].tolist()]
        steps = range((start_ms + 500) // 500 * 500, sigterm_ms - 800, 500)
        missing = [T for T in steps if T not in rows]
        assert not outside(missing, windows), (
            sym,
            "book snapshots lost outside a reconnect",
            missing,
            windows,
        )
        assert len(rows) >= len(steps) - len(missing) > 10

        # -- mark prices: one per second, the exchange's mark of that second
        secs = {}
        for r in (r for r in marks if r[0] == sym):
            s = ms(r[1]) // 1000 * 1000
            assert s not in secs, "two mark prices in one second"
            secs[s] = r[2]
            seg, i = market.second_at(s)
            assert r[2] == float(f"{seg.mark[i]:.8f}")
        expected = range((start_ms + 1000) // 1000 * 1000, sigterm_ms - 1500, 1000)
        missing = [s for s in expected if s not in secs]
        # a second is lost only when the connection was down for the whole of it
        assert not outside(missing, windows), (sym, "mark prices lost outside a reconnect", missing, windows)
        assert len(secs) > 4

        # -- open interest: a row per poll, the exchange's value at that time
        oi = q(db_url, "SELECT ts, open_interest FROM open_interest WHERE symbol = %s", sym)
        assert len(oi) >= 5
        for ts, v in oi:
            assert np.isclose(v, market.oi_at(ms(ts)), rtol=1e-9)

    # -- liquidations: what the exchange published, natural (latest per symbol per second) and replayed
    stored = {
        (r[0], ms(r[1]), ms(r[2]), r[3], r[4], r[5])
        for r in q(db_url, "SELECT symbol, ts, trade_ts, side, price, quantity FROM liquidations")
    }
    assert injected, "the collector was never subscribed when the liquidations were replayed"
    whole = 0
    for at, sent in injected:
        lost = sent - stored
        assert not lost or not outside([at], windows), ("liquidations lost outside a reconnect", lost)
        whole += not lost
    assert whole >= 1
    replayed = set().union(*(sent for _, sent in injected))
    natural = set()
    for sym in SYMBOLS:
        live = ex.markets[sym].liquidations(start_ms - 1000, sigterm_ms + 1000)
        sec = live["T"] // 1000
        for j in np.flatnonzero(np.append(sec[1:] != sec[:-1], True))[: len(sec)].tolist():
            trade_ms = int(live["T"][j])
            natural.add((sym, trade_ms))
            if trade_ms < sigterm_ms - 1500 and not any(k[0] == sym and k[2] == trade_ms for k in stored):
                published_at = (trade_ms // 1000 + 1) * 1000  # at the end of its second
                assert not outside([published_at], windows), f"live liquidation {sym} {trade_ms} lost"
    assert all(k in replayed or (k[0], k[2]) in natural for k in stored), "a liquidation never sent"

    # -- aggregate trades: rows exist, ids consecutive, each equal to the exchange's, up to SIGTERM
    for sym in SYMBOLS:
        market = ex.markets[sym]
        pd_, qd = market.spec.price_decimals, market.spec.qty_decimals
        agg = q(
            db_url,
            "SELECT agg_id, ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker "
            "FROM agg_trades WHERE symbol = %s ORDER BY agg_id",
            sym,
        )
        assert len(agg) > 50, (sym, len(agg))
        ids = [r[0] for r in agg]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{sym}: aggregate ids not consecutive"
        tr = market.trades_from_id(ids[0], len(ids), market.end_ms)
        assert tr.a.tolist() == ids
        assert [ms(r[1]) for r in agg] == tr.T.tolist()
        assert [r[2] for r in agg] == [float(fmt_units(p, pd_)) for p in tr.price.tolist()]
        assert [r[3] for r in agg] == [float(fmt_units(x, qd)) for x in tr.qty.tolist()]
        assert [(r[4], r[5], r[6]) for r in agg] == list(
            zip(tr.first.tolist(), tr.last.tolist(), tr.maker.tolist(), strict=True)
        )
        # from the first connection on, and nothing traded before SIGTERM is missing at the end
        assert ms(agg[0][1]) <= start_ms + 2_000
        before_stop = market.trades_between(start_ms, sigterm_ms)
        assert ids[-1] >= int(before_stop.a[-1])

    # nothing left in the spill folder, clean exit
    assert re.search(r"spill files left: 0\b", out), out
    spill = tmp_path / "spill"
    assert not spill.exists() or not [p for p in spill.rglob("*") if p.is_file()]
