"""`microstructure collect aggtrades`: argument errors, live dispatch, a historical run end to end."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from ih_helpers import generator_trades, stored_rows

from microstructure.cli import build_parser, main
from microstructure.exchange.config import ExchangeConfig
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
        ["--days", "1", "--weight-budget", "9999"],
        "--weight-budget: expected an integer from 20 to 2400, got '9999'",
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
