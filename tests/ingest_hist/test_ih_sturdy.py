"""The historical path under REST faults (issue 29): every REST call retried with backoff and
recorded, a day that keeps failing reported failed (exit 1) while the others load, exit codes that
mean one thing, and a clean stop on SIGINT/SIGTERM. Against the local exchange over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from ih_helpers import generator_trades, record_answers, stored_rows
from tcp_proxy import TcpProxy

from microstructure.cli import main
from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import ExchangeThread
from microstructure.ingest.binance import rest as rest_mod

CLOCK = datetime(2024, 5, 20, 3, 0, tzinfo=UTC)
FAULTS = {"rest_malformed": 0.05, "rest_429_rate": 0.05}


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's backoff, scaled down (the same schedule, 50x shorter)."""
    monkeypatch.setattr(rest_mod, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(rest_mod, "BACKOFF_MAX", 0.5)


def _cfg(cache: Path, **faults: object) -> ExchangeConfig:
    return ExchangeConfig(
        symbols=("BTCUSDT",),
        history_days=6,
        trades_per_day=3_000,
        clock_start=CLOCK,
        cache_dir=cache,
        faults=FaultConfig(**faults),  # type: ignore[arg-type]
    )


def _base(db_url: str, home: Path) -> list[str]:
    return ["--database-url", db_url, "--home", str(home)]


def _events(db_url: str, kind: str) -> list[dict[str, object]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT detail FROM ingest_events WHERE kind = %s", (kind,)).fetchall()
    return [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]


def _assert_ids_equal_archives(thread: ExchangeThread, ex: object, db_url: str) -> None:
    ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
    ref = thread.call(generator_trades, ex, "BTCUSDT", ex.origin_ms, ex.now_ms() + 1)["agg_id"]  # type: ignore[attr-defined]
    assert ids == ref[: len(ids)] and len(ids) >= len(ref) - 50  # today's last trades may follow the run


def test_historical_aggtrades_under_malformed_and_429_loads_every_day(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # two days without an archive: their ids come from REST pages (the first one found by
    # _first_id_from's hour windows), each of them as faulty as the others
    cfg = _cfg(exchange_cache, **FAULTS, missing_archive_days=("2024-05-14", "2024-05-17"))
    thread = ExchangeThread(cfg)
    with thread as ex:
        argv = [*_base(db_url, tmp_path / "home"), "collect", "aggtrades", "--symbol", "BTCUSDT",
                "--start", "2024-05-14", "--end", "2024-05-20", "--no-progress",
                "--exchange-url", ex.base_url]  # fmt: skip
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, err
        line = next(x for x in out.splitlines() if x.startswith("BTCUSDT:"))
        assert "0 refused" in line and "failed" not in line and "gaps left 0" in line
        assert "Traceback" not in err
        _assert_ids_equal_archives(thread, ex, db_url)
        retried = _events(db_url, "rest_retry")
        assert retried and all(
            e["path"] == "/fapi/v1/aggTrades" or e["path"].startswith("/fapi/") for e in retried
        )
        assert any("429" in str(e["reason"]) for e in retried) or any(
            "malformed" in str(e["reason"]).lower()
            or "JSON" in str(e["reason"])
            or "Error" in str(e["reason"])
            for e in retried
        )
        assert "REST answers retried:" in out


def test_historical_market_under_malformed_and_429_loads_every_day(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # metrics archives missing for three days: open interest of those days from openInterestHist
    cfg = _cfg(exchange_cache, **FAULTS, missing_archive_days=("2024-05-16", "2024-05-17", "2024-05-18"))
    with ExchangeThread(cfg) as ex:
        argv = [*_base(db_url, tmp_path / "home"), "collect", "market", "--symbol", "BTCUSDT",
                "--mode", "historical", "--days", "5", "--exchange-url", ex.base_url]  # fmt: skip
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert "Traceback" not in err and "FAILED" not in out
        with psycopg.connect(db_url) as conn:
            hist_days = conn.execute(
                "SELECT count(DISTINCT date_trunc('day', ts)) FROM open_interest "
                "WHERE symbol = 'BTCUSDT' AND source = 'hist' AND ts < %s",
                (CLOCK.date(),),
            ).fetchone()[0]
            # and today's, which no archive has yet: every 5 minutes since midnight up to the run
            today = conn.execute(
                "SELECT count(*) FROM open_interest WHERE symbol = 'BTCUSDT' AND source = 'hist' AND ts >= %s",
                (CLOCK.date(),),
            ).fetchone()[0]
            funding = conn.execute("SELECT count(*) FROM funding_rates WHERE symbol = 'BTCUSDT'").fetchone()[
                0
            ]
        assert hist_days == 3 and funding >= 5 * 3 - 1
        assert today == 3 * 12 + 1
        assert _events(db_url, "rest_retry")


def test_exchange_stopped_midway_exit_1_and_a_rerun_completes(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(exchange_cache)
    proxy_box: list[TcpProxy] = []
    zips: list[str] = []

    def on_request(request: object) -> None:
        path = str(getattr(request, "path", ""))
        if path.endswith(".zip"):
            zips.append(path)
            if len(zips) == 3:  # the third day's archive: the exchange goes away
                proxy_box[0].set("down")

    thread = ExchangeThread(cfg)
    record_answers(thread.exchange, on_request)
    with thread as ex, TcpProxy(ex.base_url) as proxy:
        proxy_box.append(proxy)
        url = proxy.dsn.rstrip("/")
        argv = [*_base(db_url, tmp_path / "home"), "collect", "aggtrades", "--symbol", "BTCUSDT",
                "--start", "2024-05-14", "--end", "2024-05-20", "--no-progress", "--exchange-url", url]  # fmt: skip
        t0 = time.monotonic()
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 1, (out, err)
        assert time.monotonic() - t0 < 60
        lines = err.strip().splitlines()
        final = lines[-1]
        assert final.startswith("microstructure: error: ") and "failed" in final
        assert "Traceback" not in err
        assert "BTCUSDT" in out and "failed" in out
        failed = _events(db_url, "days_failed")
        assert failed and failed[0]["days"]

        proxy.set("up")
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, err
        _assert_ids_equal_archives(thread, ex, db_url)


def test_nothing_listens_exit_1_with_the_reason(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    for cmd in (
        ["aggtrades", "--days", "2", "--no-progress"],
        ["market", "--mode", "historical", "--days", "2"],
    ):
        rc = main(
            [*_base(db_url, tmp_path / "home"), "collect", *cmd, "--symbol", "BTCUSDT", "--exchange-url", url]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1, err
        assert err[-1].startswith(
            f"microstructure: error: cannot reach the exchange at {url}: GET {url}/fapi/v1/"
        ), err
        assert "ClientConnectorError" in err[-1]
        assert "gave up after 7 attempts" in err[-1] and "run again to continue" in err[-1]
        assert not any("Traceback" in x for x in err)


def test_http_500_exit_1_with_the_reason(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ExchangeThread(_cfg(exchange_cache, rest_500_rate=1.0)) as ex:
        rc = main([*_base(db_url, tmp_path / "home"), "collect", "aggtrades", "--symbol", "BTCUSDT",
                   "--days", "2", "--no-progress", "--exchange-url", ex.base_url])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1
        assert err[-1] == (
            f"microstructure: error: the exchange at {ex.base_url} kept failing: GET {ex.base_url}/fapi/v1/time: "
            "HTTP 500 (gave up after 7 attempts); what was stored is kept, run again to continue"
        )


def test_a_418_ban_is_the_only_exit_3(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(exchange_cache)
    thread = ExchangeThread(cfg)
    with thread as ex:
        from microstructure.exchange.ratelimit import ClientUsage

        def ban() -> None:  # this IP banned for 5 minutes (as after sending on through a 429)
            ex.limiter.clients["127.0.0.1"] = ClientUsage(banned_until=ex.now_ms() + 300_000)

        thread.call(ban)
        rc = main([*_base(db_url, tmp_path / "home"), "collect", "aggtrades", "--symbol", "BTCUSDT",
                   "--days", "1", "--no-progress", "--exchange-url", ex.base_url])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 3 and "IP banned by the exchange (HTTP 418)" in err[-1]


def _spawn(argv: list[str], env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-m", "microstructure", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_a_historical_load_stops_cleanly_with_one_line(
    db_url: str, tmp_path: Path, exchange_cache: Path, sig: signal.Signals, code: int
) -> None:
    seen: list[str] = []
    # every answer 0.3 s late: the load is still walking its days when the signal comes
    thread = ExchangeThread(_cfg(exchange_cache, rest_delay=0.3))
    record_answers(thread.exchange, lambda r: seen.append(r.path))
    with thread as ex:
        proc = _spawn(
            [*_base(db_url, tmp_path / "home"), "collect", "aggtrades", "--symbol", "BTCUSDT",
             "--start", "2024-05-14", "--end", "2024-05-20", "--no-progress", "--exchange-url", ex.base_url],
            {},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(p.endswith(".zip") for p in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        lines = err.strip().splitlines()
        assert lines == [
            f"microstructure: error: stopped by {sig.name}: what was stored before it is kept (days "
            "checkpointed, the writer's batches flushed or in spill files for the next start); run the "
            "same command again to continue"
        ], err
