"""Diff-stream local books: injected sequence breaks are detected, only that symbol resyncs, and every
sampled top-20 book equals the exchange's true book at the same update id."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict

import numpy as np
import pytest
from ib_helpers import exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.exchange import LocalExchange
from microstructure.exchange.book import book_at
from microstructure.exchange.rest import fmt_units
from microstructure.ingest.collectors.book import collect_book_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def true_top(market, T: int, levels: int = 20):
    book = book_at(market, T // 50)
    pd_, qd = market.spec.price_decimals, market.spec.qty_decimals

    def side(s):
        px = [float(fmt_units(p, pd_)) for p in s.prices[:levels].tolist()]
        qty = [float(fmt_units(q, qd)) for q in s.qty[:levels].tolist()]
        return px, qty

    return book.update_id, side(book.bids), side(book.asks)


def independent_values(bids, asks, n: int = 20) -> dict[str, float]:
    """FEATURES.md's per-snapshot values with numpy from [(price, qty)] levels ("top 20" read as top n)."""
    b, a = np.array(bids, dtype=float), np.array(asks, dtype=float)
    mid = (b[0, 0] + a[0, 0]) / 2
    spread = a[0, 0] - b[0, 0]
    wmid = (b[0, 0] * a[0, 1] + a[0, 0] * b[0, 1]) / (b[0, 1] + a[0, 1])
    out = {"mid": mid, "spread": spread, "spread_bps": spread / mid * 1e4}
    out["weighted_mid_diff_bps"] = (wmid - mid) / mid * 1e4
    for k in (5, 10, 20):
        top = k if k < 20 else n
        sb, sa = b[:top, 1].sum(), a[:top, 1].sum()
        out[f"imbalance_{k}"] = (sb - sa) / (sb + sa)
    out["bid_slope"] = b[:n, 1].sum() / (mid - b[n - 1, 0])
    out["ask_slope"] = a[:n, 1].sum() / (a[n - 1, 0] - mid)
    out["bid_vol_ratio_5_20"] = b[:5, 1].sum() / b[:n, 1].sum()
    out["ask_vol_ratio_5_20"] = a[:5, 1].sum() / a[:n, 1].sum()
    return out


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
                (r["symbol"], r["last_update_id"]): true_top(ex.markets[r["symbol"]], ms(r["ts"]))
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


def test_depth_levels_keep_50_levels_and_values_from_the_top_20(db_url, ib_cache, tmp_path, capsys) -> None:
    from microstructure.cli import main
    from microstructure.exchange import ExchangeThread

    with ExchangeThread(exchange_config(ib_cache, live_rate=20.0)) as ex:
        rc = main(
            [
                "--database-url", db_url, "--home", str(tmp_path), "collect", "book-depth", "--symbol",
                "BTCUSDT,ETHUSDT", "--source", "diff", "--depth-levels", "50", "--live-seconds", "4",
                "--exchange-url", ex.base_url,
            ]
        )  # fmt: skip
        out = capsys.readouterr().out
    assert rc == 0, out
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM book_snapshots ORDER BY symbol, last_update_id"))
    assert rows and {r["source"] for r in rows} == {"diff"}
    for sym in SYMBOLS:
        assert sum(1 for r in rows if r["symbol"] == sym) >= 3, sym
    wider = 0
    for r in rows:
        # 50 levels a side, equal to the exchange's true book at the same update id
        uid, (bp, bq), (ap, aq) = true_top(ex.markets[r["symbol"]], ms(r["ts"]), 50)
        assert uid == r["last_update_id"]
        assert len(r["bid_px"]) == len(r["ask_qty"]) == 50
        assert (r["bid_px"], r["bid_qty"], r["ask_px"], r["ask_qty"]) == (bp, bq, ap, aq)
        # the per-snapshot values come from the top 20 only, as FEATURES.md defines them
        top20 = independent_values(
            list(zip(bp[:20], bq[:20], strict=True)), list(zip(ap[:20], aq[:20], strict=True))
        )
        for k, v in top20.items():
            assert np.isclose(r[k], v, rtol=1e-12), (k, r[k], v)
        all50 = independent_values(list(zip(bp, bq, strict=True)), list(zip(ap, aq, strict=True)), n=50)
        wider += not np.isclose(all50["imbalance_20"], top20["imbalance_20"]) or not np.isclose(
            all50["bid_slope"], top20["bid_slope"]
        )
    assert wider == len(rows)  # values over 50 levels would differ: the test tells them apart


def test_depth_levels_argument_errors_and_help(capsys, tmp_path) -> None:
    import pytest

    from microstructure.cli import main

    for argv, message in (
        (["book-depth", "--depth-levels", "50"], "--depth-levels: only with --mode live --source diff"),
        (
            ["all", "--source", "diff", "--depth-levels", "1001"],
            "--depth-levels: expected an integer from 20 to 1000",
        ),
        (
            ["book-depth", "--source", "diff", "--depth-levels", "19"],
            "--depth-levels: expected an integer from 20",
        ),
    ):
        rc = main(["--home", str(tmp_path), "collect", *argv, "--symbol", "BTCUSDT"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (argv, err)
    with pytest.raises(SystemExit):
        main(["collect", "book-depth", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--depth-levels N" in out and "always use the top 20" in out


@pytest.fixture
def second_db(pg_server: str, migrated_template: str):
    """A second fresh database at head on the session's server (db_url is the first)."""
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    yield pg_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_collectors_on_one_stream_store_the_same_snapshots(db_url, second_db, ib_cache, tmp_path) -> None:
    """Sampling runs on the exchange's clock: two `collect book-depth --source diff` processes started
    at different moments store identical (ts, last_update_id) rows, and equal books, where both ran."""
    import subprocess
    import time

    from ib_helpers import collect_cmd

    from microstructure.exchange import ExchangeThread

    with ExchangeThread(exchange_config(ib_cache, live_rate=20.0)) as ex:
        procs = []
        for k, dsn in enumerate((db_url, second_db)):
            cmd = collect_cmd(
                dsn, tmp_path / f"home{k}", "book-depth", "--symbol", "BTCUSDT,ETHUSDT", "--source", "diff",
                "--live-seconds", "7", "--exchange-url", ex.base_url,
            )  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            time.sleep(1.3)  # the second starts later, its local sampling clock at another phase
        outs = [p.communicate(timeout=120) for p in procs]
        truth_of = ex.markets
    assert [p.returncode for p in procs] == [0, 0], outs
    sql = "SELECT * FROM book_snapshots ORDER BY symbol, ts, last_update_id"
    a, b = (asyncio.run(fetch_all(dsn, sql)) for dsn in (db_url, second_db))
    for sym in SYMBOLS:
        ra = {(ms(r["ts"]), r["last_update_id"]): r for r in a if r["symbol"] == sym}
        rb = {(ms(r["ts"]), r["last_update_id"]): r for r in b if r["symbol"] == sym}
        lo = max(min(ra)[0], min(rb)[0])
        hi = min(max(ra)[0], max(rb)[0])
        both_a = {k for k in ra if lo <= k[0] <= hi}
        both_b = {k for k in rb if lo <= k[0] <= hi}
        assert len(both_a) >= 6, (sym, len(both_a))
        assert both_a == both_b, sym  # the same snapshots, not the same count at other update ids
        for key in both_a:
            x, y = ra[key], rb[key]
            assert (x["bid_px"], x["bid_qty"], x["ask_px"], x["ask_qty"]) == (
                y["bid_px"],
                y["bid_qty"],
                y["ask_px"],
                y["ask_qty"],
            )
            for c in ("mid", "spread", "imbalance_5", "imbalance_20", "bid_slope", "ask_vol_ratio_5_20"):
                assert x[c] == y[c], c
        # each row is the last update before a 500 ms boundary of the exchange's time T: the exchange
        # sends an update every 100 ms on the 100 ms grid, so T is 400 ms into its 500 ms
        for rows in (ra, rb):
            times = sorted(t for t, _ in rows)
            assert all(t % 500 == 400 for t in times), sym
            assert all(t2 // 500 > t1 // 500 for t1, t2 in itertools.pairwise(times)), sym
            for t, u in rows:
                uid, (bp, bq), (ap, aq) = true_top(truth_of[sym], t)
                r = rows[(t, u)]
                assert uid == u and (r["bid_px"], r["bid_qty"], r["ask_px"], r["ask_qty"]) == (bp, bq, ap, aq)


def test_the_snapshot_depth_follows_the_symbol_count_and_the_budget() -> None:
    """Snapshots of every symbol take at most a quarter of the weight budget a minute: 1000 levels
    (weight 20) for a few symbols, 50 (weight 2) for the whole market, never fewer than stored."""
    from microstructure.ingest.binance.rest import depth_weight
    from microstructure.ingest.collectors.orderbook import snapshot_limit

    assert [snapshot_limit(n, 1920) for n in (2, 24, 30, 100, 300)] == [1000, 1000, 500, 50, 50]
    for n in (2, 24, 30, 95):
        assert n * depth_weight(snapshot_limit(n, 1920)) <= 480
    assert snapshot_limit(300, 1920, levels=100) == 100  # the stored levels bound it from below
    assert snapshot_limit(2, 1920, levels=500) == 1000
