"""`microstructure exchange serve` and `python -m microstructure.exchange serve`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from exchange_helpers import run

from microstructure.exchange.cli import add_parser, config_from_args
from microstructure.exchange.config import FormatConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["exchange", "serve", *argv])


def test_options_map_to_config() -> None:
    args = parse(
        "--port", "9100", "--symbols", "btcusdt,ETHUSDT", "--history-days", "5", "--seed", "9",
        "--trades-per-day", "1000", "--live-rate", "2500", "--clock-start", "2022-08-12T12:00",
        "--ws-close-after", "7", "--ws-skip-agg-trades", "0.1", "--rest-429-rate", "0.2",
        "--missing-archive-days", "2022-08-10", "--bad-checksum-days", "2022-08-09,2022-08-11",
        "--monthly-disorder", "--ws-stall-after", "40", "--ws-stall-for", "2.5", "--rest-malformed", "0.3",
        "--rest-malformed-paths", "/fapi/v1/openInterest, /fapi/v1/fundingRate",
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.symbols == ("BTCUSDT", "ETHUSDT") and cfg.port == 9100 and cfg.history_days == 5
    assert cfg.seed == 9 and cfg.trades_per_day == 1000 and cfg.live_rate == 2500
    assert cfg.clock_start is not None and cfg.clock_start.isoformat() == "2022-08-12T12:00:00+00:00"
    f = cfg.faults
    assert f.ws_close_after == 7 and f.ws_skip_agg_trades == 0.1 and f.rest_429_rate == 0.2
    assert f.missing_archive_days == ("2022-08-10",) and f.bad_checksum_days == ("2022-08-09", "2022-08-11")
    assert f.monthly_disorder
    assert (f.ws_stall_after, f.ws_stall_for, f.rest_malformed) == (40, 2.5, 0.3)
    assert f.rest_malformed_paths == ("/fapi/v1/openInterest", "/fapi/v1/fundingRate")
    assert cfg.formats == FormatConfig()  # format variants are off unless asked for


def test_format_variant_options_map_to_config() -> None:
    args = parse(
        "--archive-time-unit", "us", "--archive-headers", "never", "--archive-booleans", "title",
        "--archive-extra-column", "--spot-archive-days", "2024-03-05", "--book-depth-bands", "12",
        "--metrics-empty", "0.25", "--archive-decimals", "16", "--dated-symbols", "ethusdt",
        "--funding-mark-price", "empty",
    )  # fmt: skip
    assert config_from_args(args).formats == FormatConfig(
        archive_time_unit="us",
        archive_headers="never",
        archive_booleans="title",
        archive_extra_column=True,
        spot_archive_days=("2024-03-05",),
        book_depth_bands=12,
        metrics_empty=0.25,
        archive_decimals=16,
        dated_symbols=("ETHUSDT",),
        funding_mark_price="empty",
    )


def test_serve_prints_base_url_answers_and_stops_on_sigterm(tmp_path) -> None:
    import aiohttp

    proc = subprocess.Popen(
        [sys.executable, "-m", "microstructure.exchange", "serve", "--port", "0", "--history-days", "1",
         "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("local exchange:"), line
        base = line.split()[5]
        assert base.startswith("http://127.0.0.1:")

        async def ping() -> tuple[int, str]:
            async with aiohttp.ClientSession() as s, s.get(base + "/fapi/v1/ping") as r:
                return r.status, await r.text()

        assert run(ping()) == (200, "{}")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
