"""`microstructure collect aggtrades`: argument errors, live dispatch, a historical run end to end."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ih_helpers import generator_trades, record_answers, stored_rows

from microstructure.cli import build_parser, main
from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import ExchangeThread

BAD = [
    (["--start", "2024-13-01"], "--start: expected YYYY-MM-DD, got '2024-13-01'"),
    (["--start", "2024-01-02", "--end", "yesterday"], "--end: expected YYYY-MM-DD, got 'yesterday'"),
    (
        ["--start", "2024-01-02", "--end", "2024-01-01"],
        "--end: expected a day on or after --start 2024-01-02",
    ),
    (["--days", "three"], "--days: expected an integer >= 0, got 'three'"),
    (["--days", "3", "--start", "2024-01-01"], "--days: give either --days N or --start/--end, not both"),
    ([], "--start: historical mode needs --start YYYY-MM-DD (and --end) or --days N"),
    (["--days", "1", "--mode", "backfill"], "--mode: expected historical or live, got 'backfill'"),
    (
        ["--days", "1", "--weight-budget", "5"],
        "--weight-budget: expected an integer >= 20, got '5'",
    ),
    (["--days", "1", "--live-seconds", "5"], "--live-seconds: only with --mode live"),
    (
        ["--mode", "live", "--live-seconds", "soon"],
        "--live-seconds: expected a number of seconds > 0, got 'soon'",
    ),
    (["--mode", "live", "--days", "2"], "--days: only with --mode historical"),
    (
        ["--mode", "live", "--stale-timeout", "never"],
        "--stale-timeout: expected a number of seconds > 0, got 'never'",
    ),
    (["--days", "1", "--rest-url", "fapi.binance.com"], "--rest-url: expected a http:// or https:// URL"),
    (["--days", "1", "--ws-url", "http://x"], "--ws-url: expected a ws:// or wss:// URL"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_arguments_name_the_argument_and_what_was_expected(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(["--home", str(tmp_path), "collect", "aggtrades", "--symbol", "BTCUSDT", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_symbol_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--home", str(tmp_path), "collect", "aggtrades", "--symbol", "BTC/USDT", "--days", "1"]) == 2
    assert "--symbol: expected a contract name like BTCUSDT, got 'BTC/USDT'" in capsys.readouterr().err


def test_collect_is_registered_with_its_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "collect",
            "aggtrades",
            "--symbol",
            "BTCUSDT",
            "--symbol",
            "ethusdt",
            "--mode",
            "live",
            "--redundant",
            "--live-seconds",
            "5",
            "--ws-url",
            "ws://127.0.0.1:1",
            "--weight-budget",
            "600",
            "--no-progress",
        ]
    )
    assert args.symbol == ["BTCUSDT", "ethusdt"] and args.mode == "live" and args.redundant
    assert args.handler.__name__ == "cmd_collect_aggtrades"


def test_live_run_from_the_cli(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ExchangeConfig(symbols=("BTCUSDT",), history_days=0, live_rate=100.0, cache_dir=exchange_cache)
    with ExchangeThread(cfg) as ex:
        rc = main(
            ["--database-url", db_url, "--home", str(tmp_path / "home"), "collect", "aggtrades",
             "--symbol", "BTCUSDT", "--mode", "live", "--live-seconds", "2", "--exchange-url", ex.base_url]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("aggTrades live: 2.0 s") and "BTCUSDT: " in out
    ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
    assert len(ids) > 50 and ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive, no gap


def test_live_refuses_an_unknown_symbol_before_connecting(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ExchangeConfig(symbols=("BTCUSDT",), history_days=0, live_rate=100.0, cache_dir=exchange_cache)
    thread = ExchangeThread(cfg)
    answers = record_answers(thread.exchange)
    with thread as ex:
        t0 = time.monotonic()
        rc = main(
            ["--database-url", db_url, "--home", str(tmp_path / "home"), "collect", "aggtrades",
             "--symbol", "BTCUSDT,nopeusdt", "--mode", "live", "--live-seconds", "60", "--exchange-url", ex.base_url]
        )  # fmt: skip
        took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    named = [line for line in err.splitlines() if "NOPEUSDT" in line]
    assert len(named) == 1 and "unknown symbol: NOPEUSDT" in named[0] and "BTCUSDT" not in named[0], err
    assert took < 30  # refused at once, not after waiting for --live-seconds
    assert [path for path, _ in answers.requests] == ["/fapi/v1/exchangeInfo"]  # no websocket, nothing else
    assert stored_rows(db_url, "BTCUSDT")["agg_id"] == []


def test_live_418_during_gap_filling_stops_the_run_with_exit_code_3(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another program of the same IP ignores a 429 and gets the IP banned mid-run: the collector's next
    REST gap fill is answered 418, and the run stops with the ban's length instead of going on."""
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",), history_days=0, live_rate=150.0, cache_dir=exchange_cache,
        weight_limit=600, ban_seconds=300, faults=FaultConfig(ws_skip_agg_trades=0.03),
    )  # fmt: skip
    thread = ExchangeThread(cfg)
    answers = record_answers(thread.exchange)
    careless: list[int] = []

    def careless_program(base_url: str) -> None:
        deadline = time.monotonic() + 60
        while not any(path == "/stream" for path, _ in answers.requests) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the collector is streaming and filling gaps
        for _ in range(500):
            try:
                with urllib.request.urlopen(
                    f"{base_url}/fapi/v1/aggTrades?symbol=BTCUSDT&limit=1", timeout=5
                ):
                    careless.append(200)
            except urllib.error.HTTPError as exc:
                careless.append(exc.code)
                if exc.code == 418:
                    return

    with thread as ex:
        other = threading.Thread(target=careless_program, args=(ex.base_url,), daemon=True)
        other.start()
        rc = main(
            ["--database-url", db_url, "--home", str(tmp_path / "home"), "collect", "aggtrades",
             "--symbol", "BTCUSDT", "--mode", "live", "--live-seconds", "120", "--exchange-url", ex.base_url]
        )  # fmt: skip
        other.join(timeout=10)
    captured = capsys.readouterr()
    assert careless and careless[-1] == 418
    assert rc == 3, captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("microstructure: error:")]
    assert len(errors) == 1 and "HTTP 418" in errors[0], captured.err
    assert re.search(r"for (29\d|300) s", errors[0]), errors[0]  # the ban's length
    assert not captured.out  # no summary of a run that went on to its end
    # the exchange answered 418 twice: the careless program once, the collector once, which then sent nothing
    assert answers.statuses()[418] == 2
    paths = [path for path, _ in answers.requests]
    assert paths[0] == "/fapi/v1/exchangeInfo" and "/stream" in paths
    ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
    assert len(ids) > 100  # what it had was written
    assert not list((tmp_path / "home" / "spill").glob("*.arrow"))


def test_historical_run_from_the_cli(
    db_url: str,
    tmp_path: Path,
    exchange_cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = ExchangeConfig(
        symbols=("BTCUSDT", "ETHUSDT"),
        history_days=2,
        trades_per_day=8_000,
        clock_start=datetime(2024, 5, 20, 2, 0, tzinfo=UTC),
        cache_dir=exchange_cache,
    )
    thread = ExchangeThread(cfg)
    with thread as ex:
        monkeypatch.setenv("MICROSTRUCTURE_EXCHANGE_URL", ex.base_url)  # the flag's environment variable
        base = ["--database-url", db_url, "--home", str(tmp_path / "home"), "collect", "aggtrades"]
        rc = main(
            [*base, "--symbol", "btcusdt,ethusdt", "--days", "2", "--no-progress", "--weight-budget", "600"]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "aggTrades 2024-05-18 .. 2024-05-20 (today 2024-05-20)" in out
        for sym in ("BTCUSDT", "ETHUSDT"):
            line = next(x for x in out.splitlines() if x.startswith(sym + ":"))
            assert "2 archive, 1 REST, 0 already complete, 0 refused" in line and "gaps left 0" in line
            ids = stored_rows(db_url, sym)["agg_id"]
            ref = thread.call(generator_trades, ex, sym, ex.origin_ms, ex.now_ms() + 1)["agg_id"]
            assert ids == ref[: len(ids)] and len(ids) > 0.9 * len(ref)

        rc = main([*base, "--symbol", "BTCUSDT", "--symbol", "XYZUSDT", "--days", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and "unknown symbol: XYZUSDT" in err and "nothing was downloaded" in err


def all_bars(db_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every column of every bar of features_1m, _5m and _15m."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        return {
            tf: conn.execute(f"SELECT * FROM features_{tf} ORDER BY symbol, bucket").fetchall()
            for tf in ("1m", "5m", "15m")
        }


def test_historical_run_refreshes_a_loaded_day_while_the_next_one_loads(
    db_url: str, tmp_path: Path, exchange_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`collect aggtrades --mode historical` materialises the features of the days it has attached
    while later days still load, not only after the last: with the third day's load held (another
    session holds that day's partition lock), the first two days' bars are already there, equal to
    what a full re-materialisation of the finished run gives."""
    import psycopg

    days = ("2022-08-09", "2022-08-10", "2022-08-11")
    cols = "symbol, bucket, trade_count, volume, open, high, low, close, vwap"
    bars_before_third = (
        f"SELECT {cols} FROM features_1m WHERE bucket < '{days[2]}' AND trade_count > 0 ORDER BY 2"
    )
    cfg = ExchangeConfig(
        symbols=("BTCUSDT",),
        history_days=3,
        trades_per_day=20_000,
        clock_start=datetime(2022, 8, 12, 6, 0, tzinfo=UTC),
        cache_dir=exchange_cache,
    )
    with ExchangeThread(cfg) as ex, psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtext('microstructure_partition:' || "
            "microstructure_day_partition_name('agg_trades', %s::date)))",
            (days[2],),
        )
        argv = ["--database-url", db_url, "--home", str(tmp_path / "home"), "collect", "aggtrades",
                "--symbol", "BTCUSDT", "--start", days[0], "--end", days[2], "--no-progress",
                "--exchange-url", ex.base_url]  # fmt: skip
        rc: list[int] = []
        run = threading.Thread(target=lambda: rc.append(main(argv)), daemon=True)
        run.start()
        seen: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 60
        minutes_traded = "SELECT count(DISTINCT date_trunc('minute', ts)) FROM agg_trades WHERE ts < %s::date"
        while time.monotonic() < deadline and not rc:
            (minutes,) = holder.execute(minutes_traded, (days[2],)).fetchone()  # type: ignore[misc]
            seen = holder.execute(bars_before_third).fetchall()
            if minutes > 2_000 and len(seen) == minutes:  # both days loaded and every chunk refreshed
                break
            time.sleep(0.05)
        third = holder.execute("SELECT count(*) FROM agg_trades WHERE ts >= %s::date", (days[2],)).fetchone()
        holder.execute("SELECT pg_advisory_unlock_all()")
        run.join(120)
    assert rc == [0]
    assert third == (0,)  # the third day had not loaded yet ...
    assert (
        len(seen) > 2_000 and len({b[1].date() for b in seen}) == 2
    )  # ... while the two before had their bars
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute(bars_before_third).fetchall() == seen  # final already: nothing changed them
        (last_day,) = conn.execute(f"SELECT count(*) FROM features_1m WHERE bucket >= '{days[2]}'").fetchone()  # type: ignore[misc]
        assert last_day > 1_000
    everything = all_bars(db_url)
    assert sum(len(v) for v in everything.values()) > 5_000

    # the whole history re-materialised from the raw rows at once, a day per chunk on one connection
    # (the refreshes beside the load cut each day in quarters on two): the same bars
    monkeypatch.setenv("MICROSTRUCTURE_REFRESH_PARALLEL", "1")
    assert main(["--database-url", db_url, "--home", str(tmp_path / "home"), "features", "refresh"]) == 0
    assert all_bars(db_url) == everything
