"""`collect ... --group` and `--all-symbols` end to end: real collector processes on the local
exchange's market (a universe of synthetic perpetuals), one embedded PostgreSQL.

- a group of 2 on 31 symbols: SIGKILL one, the survivor owns all within the lease timeout and a few
  seconds; the killed member started again takes its share back; every symbol's ids are contiguous
  with no duplicate;
- --redundancy 2: both members collect every symbol, one copy stored;
- --all-symbols follows a listing and a delisting (said once);
- bad flag values: one line, exit 2.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from microstructure.exchange.config import ExchangeConfig
from microstructure.exchange.server import ExchangeThread

UNIVERSE = 30  # U0001USDT.. besides BTCUSDT


def member(db_url: str, home: Path, url: str, *extra: str, kind: str = "aggtrades") -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "microstructure", "--database-url", db_url, "--home", str(home),
        "collect", kind, "--mode", "live", "--exchange-url", url, *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSTRUCTURE_")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def owned(db_url: str, group: str) -> dict[str, list[str]]:
    """member -> the symbols its row says it collects, live members only."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT member_id, owned FROM collector_group_members WHERE group_name = %s "
            "AND heartbeat_at > now() - make_interval(secs => lease_timeout_s)",
            (group,),
        ).fetchall()
    return {m: sorted(o) for m, o in rows}


def splits(db_url: str, group: str, members: int, everything: list[str]) -> dict[str, list[str]] | None:
    """The live members' shares when `members` of them split `everything` with no overlap, else None."""
    o = owned(db_url, group)
    shares = [s for v in o.values() for s in v]
    if len(o) == members and all(o.values()) and sorted(shares) == everything:
        return o
    return None


def wait_for(what, timeout: float, step: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    return None


def stop(proc: subprocess.Popen, timeout: float = 40) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def id_runs(db_url: str) -> dict[str, tuple[int, int, int]]:
    """symbol -> (rows, min id, max id)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT symbol, count(*), min(agg_id), max(agg_id) FROM agg_trades GROUP BY symbol"
        ).fetchall()
    return {s: (n, lo, hi) for s, n, lo, hi in rows}


@pytest.fixture
def market(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cfg = ExchangeConfig(
        history_days=0,
        universe=UNIVERSE,
        universe_rate=90.0,
        live_rate=5.0,
        cache_dir=tmp_path_factory.mktemp("exchange-cache"),
    )
    thread = ExchangeThread(cfg)
    with thread as ex:
        ex.thread = thread  # type: ignore[attr-defined]
        yield ex


def ids_between(ex, sym: str, t0: int, t1: int) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
    """The first and last aggregate ids of `sym` the exchange traded from `t0` to `t1`."""
    tr = ex.markets[sym].trades_between(t0, t1)
    return (int(tr.a[0]), int(tr.a[-1])) if len(tr) else None


def symbols_of(ex) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(ex.markets)


def test_group_of_two_sigkill_takeover_and_rejoin_leave_no_gap(db_url: str, tmp_path: Path, market) -> None:  # type: ignore[no-untyped-def]
    everything = symbols_of(market)
    assert len(everything) == UNIVERSE + 1
    flags = ("--all-symbols", "--group", "g", "--lease-timeout", "3")
    a = member(db_url, tmp_path / "a", market.base_url, *flags)
    b = member(db_url, tmp_path / "b", market.base_url, *flags)
    procs = [a, b]
    try:
        split = wait_for(lambda: splits(db_url, "g", 2, everything), 40)
        assert split, f"no split of the universe: {owned(db_url, 'g')}"
        time.sleep(3)
        collecting = market.now_ms()
        # SIGKILL a: b owns everything within the lease timeout and a few seconds
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
        killed_at = time.monotonic()
        alone = wait_for(lambda: splits(db_url, "g", 1, everything), 20)
        assert alone, f"the survivor did not take everything over: {owned(db_url, 'g')}"
        took = time.monotonic() - killed_at
        assert took < 3 + 8, took
        time.sleep(4)
        # a comes back: it takes a share again, nothing is collected twice for long
        a2 = member(db_url, tmp_path / "a2", market.base_url, *flags)
        procs.append(a2)
        again = wait_for(lambda: splits(db_url, "g", 2, everything), 40)
        assert again, f"no rebalancing after the restart: {owned(db_url, 'g')}"
        time.sleep(4)
        before_stop = market.now_ms()
    finally:
        outs = [stop(p) for p in procs if p is not a]
    for i, (rc, out) in enumerate(outs):
        (tmp_path / f"member-{i}.out").write_text(out)  # for a look after a failure
        assert rc == 0, out[-3000:]
        assert "group g, member" in out, out[-3000:]
    check_contiguous(db_url, market, everything, collecting, before_stop)
    with psycopg.connect(db_url) as conn:  # the clean stops left; the killed member's row stays, dead
        live = conn.execute(
            "SELECT member_id FROM collector_group_members WHERE heartbeat_at > now() - interval '3 s'"
        ).fetchall()
        assert live == [] and conn.execute("SELECT count(*) FROM collector_group_members").fetchone() == (1,)


def test_redundancy_two_collects_everything_twice_and_stores_one_copy(
    db_url: str, tmp_path: Path, market
) -> None:  # type: ignore[no-untyped-def]
    everything = symbols_of(market)
    flags = ("--all-symbols", "--group", "r", "--lease-timeout", "3", "--redundancy", "2")
    procs = [member(db_url, tmp_path / h, market.base_url, *flags) for h in ("a", "b")]
    try:
        both = wait_for(lambda: (o := owned(db_url, "r")) and len(o) == 2
                        and all(v == everything for v in o.values()), 40)  # fmt: skip
        assert both, owned(db_url, "r")
        time.sleep(3)
        collecting = market.now_ms()
        time.sleep(3)
        before_stop = market.now_ms()
    finally:
        outs = [stop(p) for p in procs]
    for rc, out in outs:
        assert rc == 0, out[-3000:]
    check_contiguous(db_url, market, everything, collecting, before_stop)
    stored = sum(n for n, _, _ in id_runs(db_url).values())
    # both members collected every symbol: together they handed the writer most rows twice
    for _, out in outs:
        assert f"symbols owned: {len(everything)} at" in out, out[-3000:]
    both_got = [received(out) for _, out in outs]
    assert sum(both_got) >= 1.5 * stored and min(both_got) >= 0.6 * stored, (both_got, stored)


def check_contiguous(db_url: str, market, everything: list[str], t0: int, t1: int) -> None:  # type: ignore[no-untyped-def]
    """Every symbol that traded from `t0` (all collecting) to `t1` (before the stop) is stored up to
    its last trade before `t1`, its ids contiguous (the primary key holds one copy of each)."""
    runs = id_runs(db_url)
    assert set(runs) <= set(everything)
    for sym in everything:
        traded = market.thread.call(ids_between, market, sym, t0, t1)
        if traded is None:
            continue  # a quiet contract of the Zipf tail: nothing traded then
        assert sym in runs, f"{sym} traded ids {traded}, nothing stored"
        n, lo, hi = runs[sym]
        assert n == hi - lo + 1, f"{sym}: {hi - lo + 1 - n} ids missing between {lo} and {hi}"
        # (a symbol never stored before starts at the first message its first owner got, so the
        # first ids are not checked: the handovers and the kill are inside the stored range)
        assert hi >= traded[1], f"{sym}: stored {lo}..{hi}, traded {traded}"


def received(out: str) -> int:
    """Rows a member's summary says it took from the websocket and from REST, over every run."""
    total = 0
    for m in re.finditer(r": ([\d,]+) from websocket, ([\d,]+) by REST", out):
        total += int(m.group(1).replace(",", "")) + int(m.group(2).replace(",", ""))
    return total


@pytest.mark.parametrize(
    ("flags", "culprit"),
    [
        (("--all-symbols", "--symbol", "BTCUSDT"), "--all-symbols"),
        ((), "--symbol"),
        (("--symbol", "BTCUSDT", "--top", "5"), "--top"),
        (("--all-symbols", "--top", "0"), "--top"),
        (("--all-symbols", "--quote", "us-dt"), "--quote"),
        (("--all-symbols", "--exclude", "BTC/USDT"), "--exclude"),
        (("--all-symbols", "--universe-interval", "0"), "--universe-interval"),
        (("--symbol", "BTCUSDT", "--lease-timeout", "5"), "--lease-timeout"),
        (("--symbol", "BTCUSDT", "--group", "g", "--lease-timeout", "0.5"), "--lease-timeout"),
        (("--symbol", "BTCUSDT", "--group", "g", "--redundancy", "0"), "--redundancy"),
        (("--symbol", "BTCUSDT", "--group", "bad name"), "--group"),
        (("--symbol", "BTCUSDT", "--group", "g", "--mode", "historical", "--days", "1"), "--group"),
    ],
)
def test_bad_flag_values_are_one_line_and_exit_2(
    flags: tuple[str, ...], culprit: str, tmp_path: Path
) -> None:
    for kind in ("aggtrades", "all"):
        res = subprocess.run(
            [sys.executable, "-m", "microstructure", "--home", str(tmp_path), "collect", kind,
             "--mode", "live", "--exchange-url", "http://127.0.0.1:9", *flags],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 2, (kind, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and culprit in lines[0], (kind, res.stderr)


def test_collect_all_top_n_by_quote_volume(db_url: str, tmp_path: Path, market) -> None:  # type: ignore[no-untyped-def]
    from microstructure.exchange.rest import ticker_24hr_body

    def top4() -> list[str]:
        now = market.now_ms()
        vol = {
            s: float(market.thread.call(ticker_24hr_body, market, s, now)["quoteVolume"])
            for s in market.markets
        }
        return sorted(sorted(vol, key=lambda s: (-vol[s], s))[:4])

    before = top4()
    proc = member(db_url, tmp_path / "h", market.base_url, "--all-symbols", "--top", "4", "--quote", "USDT",
                  "--live-seconds", "8", "--features-interval", "0", kind="all")  # fmt: skip
    rc, out = stop(proc, timeout=90) if proc.wait(90) is None else (proc.returncode, proc.stdout.read())
    assert rc == 0, out[-3000:]
    after = top4()  # the ranks near the 4th place may swap during the run: the read was one of them
    with psycopg.connect(db_url) as conn:
        marks = sorted(r[0] for r in conn.execute("SELECT DISTINCT symbol FROM mark_prices").fetchall())
        books = sorted(r[0] for r in conn.execute("SELECT DISTINCT symbol FROM book_snapshots").fetchall())
    assert marks == books and marks in (before, after), (marks, books, before, after)
    assert "top 4 by 24 h quote volume" in out


def test_historical_all_symbols_backfills_the_universe_at_start(db_url: str, tmp_path: Path) -> None:
    cfg = ExchangeConfig(history_days=1, universe=8, cache_dir=tmp_path / "cache")
    with ExchangeThread(cfg) as ex:
        res = subprocess.run(
            [sys.executable, "-m", "microstructure", "--database-url", db_url, "--home", str(tmp_path), "collect",
             "market", "--mode", "historical", "--days", "1", "--all-symbols", "--exclude", "BTCUSDT",
             "--top", "3", "--exchange-url", ex.base_url],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        "universe: every TRADING USD-M perpetual, top 3 by 24 h quote volume, except BTCUSDT: 3 symbols"
        in res.stdout
    )
    with psycopg.connect(db_url) as conn:
        got = sorted(r[0] for r in conn.execute("SELECT DISTINCT symbol FROM funding_rates").fetchall())
    assert len(got) == 3 and "BTCUSDT" not in got, (got, res.stdout)


def test_ticker_24hr_weight_and_a_malformed_reply(market) -> None:  # type: ignore[no-untyped-def]
    import json
    import urllib.request

    from microstructure.ingest.binance.rest import DecodeError
    from microstructure.ingest.binance.tickers import decode_quote_volumes

    def get(path: str) -> tuple[int, object]:
        with urllib.request.urlopen(market.base_url + path, timeout=30) as r:
            return int(r.headers["X-MBX-USED-WEIGHT-1M"]), json.loads(r.read())

    w0, one = get("/fapi/v1/ticker/24hr?symbol=BTCUSDT")
    w1, every = get("/fapi/v1/ticker/24hr")
    assert w1 - w0 == 40  # every symbol: weight 40, as on Binance
    assert isinstance(one, dict) and one["symbol"] == "BTCUSDT" and float(one["quoteVolume"]) > 0
    volumes = decode_quote_volumes(every)
    assert sorted(volumes) == sorted(market.markets) and volumes["BTCUSDT"] > 0
    for bad in ({"symbol": "X"}, [{"symbol": "X", "quoteVolume": "n/a"}], [{"quoteVolume": "1"}]):
        with pytest.raises(DecodeError):
            decode_quote_volumes(bad)
