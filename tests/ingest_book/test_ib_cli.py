"""`collect book-depth | market | all`: argument errors name the flag and what was expected; help says
what bookDepth is and is not; a historical run through the CLI."""

from __future__ import annotations

import pytest
from ib_helpers import exchange_config

from microstructure.cli import main
from microstructure.exchange import ExchangeThread


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["market", "--symbol", "BTCUSDT", "--mode", "sideways"],
            "--mode: expected live or historical, got 'sideways'",
        ),
        (
            ["book-depth", "--symbol", "btc-usdt"],
            "--symbol: expected a contract name like BTCUSDT, got 'btc-usdt'",
        ),
        (["all", "--symbol", "BTCUSDT", "--source", "l2"], "--source: expected depth20 or diff, got 'l2'"),
        (
            ["market", "--symbol", "BTCUSDT", "--oi-interval", "0"],
            "--oi-interval: expected a number of seconds > 0",
        ),
        (
            ["book-depth", "--symbol", "BTCUSDT", "--mode", "historical"],
            "--start: historical mode needs --start",
        ),
        (["market", "--symbol", "BTCUSDT", "--days", "3"], "--days: only with --mode historical"),
        (
            ["all", "--symbol", "BTCUSDT", "--stale-timeout", "-1"],
            "--stale-timeout: expected a number of seconds > 0, got '-1'",
        ),
        (
            ["all", "--symbol", "BTCUSDT", "--live-seconds", "soon"],
            "--live-seconds: expected a number of seconds > 0",
        ),
        (
            [
                "book-depth",
                "--symbol",
                "BTCUSDT",
                "--mode",
                "historical",
                "--days",
                "2",
                "--start",
                "2024-01-01",
            ],
            "--days: give either --days N or --start/--end, not both",
        ),
        (
            [
                "market",
                "--symbol",
                "BTCUSDT",
                "--mode",
                "historical",
                "--start",
                "2024-01-05",
                "--end",
                "2024-01-01",
            ],
            "--end: expected a day on or after --start",
        ),
        (
            ["all", "--symbol", "BTCUSDT", "--exchange-url", "ftp://x"],
            "--exchange-url: expected a http:// or https://",
        ),
    ],
)
def test_bad_arguments_name_the_flag(argv, message, capsys, tmp_path) -> None:
    rc = main(["--home", str(tmp_path), "collect", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err


def test_book_depth_help_says_what_it_is_not(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["collect", "book-depth", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "NOT a 20-level order book" in out and "+-1, 2, 3, 4 and 5 % of the mid" in out


def test_historical_book_depth_through_the_cli(db_url, ib_cache, tmp_path, capsys) -> None:
    import psycopg

    with ExchangeThread(exchange_config(ib_cache, history_days=2, live_rate=None)) as ex:
        rc = main(
            [
                "--database-url", db_url, "--home", str(tmp_path), "collect", "book-depth", "--symbol",
                "BTCUSDT", "--mode", "historical", "--days", "2", "--exchange-url", ex.base_url,
            ]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    with psycopg.connect(db_url) as conn:
        n = conn.execute("SELECT count(*) FROM book_depth_bands WHERE symbol = 'BTCUSDT'").fetchone()[0]
        bars = conn.execute(
            "SELECT count(*), count(depth_imbalance_1pct), count(ask_depth_5pct), count(bid_depth_0p2pct) "
            "FROM features_1m WHERE symbol = 'BTCUSDT'"
        ).fetchone()
    assert n == 2 * 2880 * 10 and f"{n} new rows from 2 archives" in out
    # refreshed before the report: every minute of the two days has its band features (no 0.2 band
    # in a file of the old format)
    assert "features (refresher)" in out and bars == (2 * 1440, 2 * 1440, 2 * 1440, 0)


@pytest.mark.parametrize("kind", ["book-depth", "market", "all"])
def test_an_unknown_symbol_is_refused_before_anything_starts(
    kind, db_url, ib_cache, tmp_path, capsys
) -> None:
    import time

    import psycopg

    with ExchangeThread(exchange_config(ib_cache)) as ex:
        t0 = time.monotonic()
        rc = main(
            ["--database-url", db_url, "--home", str(tmp_path), "collect", kind, "--symbol", "BTCUSDT",
             "--symbol", "NOPEUSDT", "--mode", "live", "--live-seconds", "60", "--exchange-url", ex.base_url]
        )  # fmt: skip
        took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and "unknown symbol: NOPEUSDT" in err and len(err.strip().splitlines()) == 1, err
    assert took < 30  # refused at once, not after --live-seconds of silent streams
    with psycopg.connect(db_url) as conn:
        stored = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("book_snapshots", "mark_prices", "open_interest", "agg_trades")
        ]
    assert stored == [0, 0, 0, 0]
