"""`collect all` for 2 symbols in its own process, connections dropped mid-run, SIGTERM at the end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ib_helpers import exchange_config

from microstructure.exchange import ExchangeThread

HERE = Path(__file__).resolve().parent
SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def q(dsn: str, sql: str):
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_collect_all_sigterm_flushes_everything(db_url, ib_cache, tmp_path) -> None:
    cfg = exchange_config(ib_cache, live_rate=20.0)
    cfg.faults.ws_close_random = 2.5  # every websocket is dropped after ~2.5 s on average
    with ExchangeThread(cfg) as ex:
        cmd = [
            sys.executable,
            str(HERE / "ib_run_cli.py"),
            "--database-url",
            db_url,
            "--home",
            str(tmp_path),
            "all",
            "--symbol",
            "BTCUSDT,ETHUSDT",
            "--exchange-url",
            ex.base_url,
            "--oi-interval",
            "1",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(9.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out, out

    # the exchange did drop our connections, and they came back
    reconnects = q(db_url, "SELECT count(*) FROM ingest_events WHERE kind = 'reconnect'")[0][0]
    assert reconnects >= 2, out

    # no loss between what arrived and what is stored: every depth20 / mark / liquidation message received
    book_msgs = int(re.search(r"book_depth20: (\d+) messages, (\d+) malformed", out).group(1))
    market_msgs = int(re.search(r"market: (\d+) messages, (\d+) malformed", out).group(1))
    dups = re.search(r"book_duplicates_dropped: (\d+)", out)
    n_book = q(db_url, "SELECT count(*) FROM book_snapshots")[0][0]
    assert n_book == book_msgs - (int(dups.group(1)) if dups else 0) and n_book > 10
    n_mark = q(db_url, "SELECT count(*) FROM mark_prices")[0][0]
    n_liq = q(db_url, "SELECT count(*) FROM liquidations")[0][0]
    assert n_mark + n_liq == market_msgs and n_mark > 8
    for sym in SYMBOLS:
        rows = int(re.search(rf"{sym}: (\d+) snapshots", out).group(1))
        assert rows == q(db_url, f"SELECT count(*) FROM book_snapshots WHERE symbol = '{sym}'")[0][0]
        polls = int(
            re.search(rf"{sym}: \d+ mark prices, \d+ funding rates, (\d+) open-interest polls", out).group(1)
        )
        assert polls == q(db_url, f"SELECT count(*) FROM open_interest WHERE symbol = '{sym}'")[0][0] >= 5
    # aggregate trades (when the live collector is in this build): consecutive ids, nothing lost
    agg = q(db_url, "SELECT symbol, min(agg_id), max(agg_id), count(*) FROM agg_trades GROUP BY symbol")
    for _sym, lo, hi, n in agg:
        assert hi - lo + 1 == n
    # nothing left in the spill folder
    assert "spill files left: 0" in out
    spill = tmp_path / "spill"
    assert not spill.exists() or not [p for p in spill.rglob("*") if p.is_file()]
