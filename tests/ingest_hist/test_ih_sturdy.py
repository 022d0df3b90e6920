"""The historical path under REST faults (issue 29): every REST call retried with backoff and
recorded, a day that keeps failing reported failed (exit 1) while the others load, exit codes that
mean one thing, and a clean stop on SIGINT/SIGTERM. Against the local exchange over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from ih_helpers import Answers, generator_trades, record_answers, stored_rows
from tcp_proxy import TcpProxy

from microstructure.cli import main
from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import ExchangeThread
from microstructure.ingest.binance import rest as rest_mod
from microstructure.ingest.collectors import progress as progress_mod
from microstructure.logging_setup import configure

CLOCK = datetime(2024, 5, 20, 3, 0, tzinfo=UTC)
FAULTS = {"rest_malformed": 0.05, "rest_429_rate": 0.05}


@pytest.fixture(autouse=True)
def quiet_logs() -> None:
    """The default log level on this test's stderr: a handler an earlier main(["-v", ...]) left
    behind would write the exchange thread's info lines to that test's closed capture."""
    configure(0)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's backoff, scaled down (the same schedule, 50x shorter)."""
    monkeypatch.setattr(rest_mod, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(rest_mod, "BACKOFF_MAX", 0.5)


def _cfg(cache: Path, *, seed: int = 1, history_days: int = 6, trades_per_day: int = 3_000,
         listed_days: int | None = None, **faults: object) -> ExchangeConfig:  # fmt: skip
    return ExchangeConfig(
        symbols=("BTCUSDT",),
        seed=seed,
        listed_days=listed_days,
        history_days=history_days,
        trades_per_day=trades_per_day,
        clock_start=CLOCK,
        cache_dir=cache,
        faults=FaultConfig(**faults),  # type: ignore[arg-type]
    )


# The acceptance runs (issue 29): 30 days under --rest-malformed 0.05 --rest-429-rate 0.05, in 5 runs
# out of 5 (5 seeds: other data, other faults); days small, so the five fit in well under a minute.
SEEDS = (1, 2, 3, 4, 5)
MONTH = {"history_days": 31, "trades_per_day": 300}
MARKET_DAYS = 12  # its days hold 1,440-row kline archives whatever the trade count: fewer of them
DAY_LINE = re.compile(
    r"progress\W.*BTCUSDT: (\d{4}-\d\d-\d\d(?:\.\.\d{4}-\d\d-\d\d)?|\d{4}-\d\d) (\w[^(]*)\((\d+)/(\d+) days"
)
BEAT = re.compile(r"logger=microstructure\.progress msg=\"(\w[\w ]*): (\d+)/(\d+) days, ([\d,]+) rows")


def _base(db_url: str, home: Path) -> list[str]:
    return ["--database-url", db_url, "--home", str(home)]


def _events(db_url: str, kind: str) -> list[dict[str, object]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT detail FROM ingest_events WHERE kind = %s", (kind,)).fetchall()
    return [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]


def _assert_ids_equal_archives(
    thread: ExchangeThread, ex: object, db_url: str, first_day: str | None = None
) -> None:
    ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
    t0 = (
        ex.origin_ms
        if first_day is None
        else int(datetime.fromisoformat(first_day + "T00:00+00:00").timestamp() * 1000)
    )  # type: ignore[attr-defined]
    ref = thread.call(generator_trades, ex, "BTCUSDT", t0, ex.now_ms() + 1)["agg_id"]  # type: ignore[attr-defined]
    assert ids == ref[: len(ids)] and len(ids) >= len(ref) - 50  # today's last trades may follow the run


def _assert_every_429_retried(answers: Answers, db_url: str, prefix: str) -> None:
    """Each 429 the exchange injected was retried and recorded (ingest_events rest_retry) (its
    malformed answers are HTTP 200: retried too, but not countable from the statuses)."""
    retried = _events(db_url, "rest_retry")
    assert all(str(e["path"]).startswith(prefix) for e in retried)
    injected = sum(1 for path, status, _, _ in answers.answers if status == 429 and path.startswith(prefix))
    assert sum("429" in str(e["reason"]) for e in retried) == injected, (injected, retried)


@pytest.mark.parametrize("seed", SEEDS)
def test_historical_aggtrades_under_malformed_and_429_loads_every_day(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    # 30 days, two of them without an archive: their ids come from REST pages (the first one found
    # by _first_id_from's hour windows), each of them as faulty as the others. -v: a line per day.
    cfg = _cfg(
        exchange_cache, seed=seed, **MONTH, **FAULTS, missing_archive_days=("2024-05-01", "2024-05-17")
    )
    thread = ExchangeThread(cfg)
    answers = record_answers(thread.exchange)
    with thread as ex:
        argv = [*_base(db_url, tmp_path / "home"), "-v", "collect", "aggtrades", "--symbol", "BTCUSDT",
                "--start", "2024-04-21", "--end", "2024-05-20", "--no-progress", "--no-monthly",
                "--exchange-url", ex.base_url]  # fmt: skip
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, err
        line = next(x for x in out.splitlines() if x.startswith("BTCUSDT:"))
        assert "0 refused" in line and "failed" not in line and "gaps left 0" in line
        assert "Traceback" not in err
        _assert_ids_equal_archives(thread, ex, db_url, "2024-04-21")
        with psycopg.connect(db_url) as conn:
            covered = conn.execute(
                "SELECT count(*) FROM agg_trade_coverage WHERE symbol = 'BTCUSDT'"
            ).fetchone()
        assert covered is not None and covered[0] == 30  # every day loaded
        # one info line per day at -v, in order, counting up to 30/30
        days = [m.groups() for m in map(DAY_LINE.search, err.splitlines()) if m]
        assert [d[0] for d in days] == [f"2024-04-{d}" for d in range(21, 31)] + [
            f"2024-05-{d:02d}" for d in range(1, 21)
        ], err[-3000:]
        assert [int(d[2]) for d in days] == list(range(1, 31)) and {d[3] for d in days} == {"30"}
        assert days[10][1].strip() == "REST" and days[0][1].strip() == "archive"  # 2024-05-01 had no archive
        _assert_every_429_retried(answers, db_url, "/fapi/")


@pytest.mark.parametrize("seed", SEEDS)
def test_historical_market_under_malformed_and_429_loads_every_day(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str], seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # MARKET_DAYS days, metrics archives missing for three: open interest of those days from openInterestHist.
    # The default log level, and a heartbeat every 0.1 s (a minute in a real run): the heartbeat lines.
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.1)
    cfg = _cfg(exchange_cache, seed=seed, **MONTH, **FAULTS,
               missing_archive_days=("2024-05-16", "2024-05-17", "2024-05-18"))  # fmt: skip
    thread = ExchangeThread(cfg)
    answers = record_answers(thread.exchange)
    with thread as ex:
        argv = [*_base(db_url, tmp_path / "home"), "collect", "market", "--symbol", "BTCUSDT",
                "--mode", "historical", "--days", str(MARKET_DAYS), "--exchange-url", ex.base_url]  # fmt: skip
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert "Traceback" not in err and "FAILED" not in out and "failed" not in out
        beats = [m.groups() for m in map(BEAT.search, err.splitlines()) if m]
        assert (
            beats
            and {b[0] for b in beats} == {"market historical"}
            and {b[2] for b in beats} == {str(MARKET_DAYS)}
        )
        done = [int(b[1]) for b in beats]
        assert done == sorted(done) and done[-1] <= MARKET_DAYS
        assert not DAY_LINE.search(err)  # the per-day lines are for -v
        with psycopg.connect(db_url) as conn:
            klines = conn.execute(
                "SELECT count(DISTINCT date_trunc('day', ts)) FROM price_klines WHERE symbol = 'BTCUSDT'"
            ).fetchone()[0]
            oi_days = conn.execute(
                "SELECT count(DISTINCT date_trunc('day', ts)) FROM open_interest WHERE symbol = 'BTCUSDT'"
            ).fetchone()[0]
        assert (
            klines == MARKET_DAYS - 3 and oi_days == MARKET_DAYS + 1
        )  # every day: its archives, or openInterestHist for the 3 without; and today's from openInterestHist
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
        assert hist_days == 3 and funding >= MARKET_DAYS * 3 - 1
        assert today == 3 * 12 + 1
        _assert_every_429_retried(answers, db_url, "/f")


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


def test_market_exchange_stopped_midway_exit_1_and_a_rerun_completes(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(exchange_cache)
    proxy_box: list[TcpProxy] = []
    zips: list[str] = []

    def on_request(request: object) -> None:
        path = str(getattr(request, "path", ""))
        if path.endswith(".zip"):
            zips.append(path)
            if len(zips) == 6:  # in the second day's archives: the exchange goes away
                proxy_box[0].set("down")

    thread = ExchangeThread(cfg)
    record_answers(thread.exchange, on_request)
    with thread as ex, TcpProxy(ex.base_url) as proxy:
        proxy_box.append(proxy)
        url = proxy.dsn.rstrip("/")
        argv = [*_base(db_url, tmp_path / "home"), "collect", "market", "--mode", "historical", "--symbol",
                "BTCUSDT", "--days", "5", "--exchange-url", url]  # fmt: skip
        t0 = time.monotonic()
        rc = main(argv)
        out, err = capsys.readouterr()
        took = time.monotonic() - t0
        assert rc == 1, (out, err)
        assert took < 20, took  # the days left are not each tried with their own retries (it took 60 s)
        final = err.strip().splitlines()[-1]
        assert final.startswith(
            f"microstructure: error: cannot reach the exchange at {url}: GET {url}/data/"
        ), final
        assert final.endswith("run again to continue") and "Traceback" not in err

        proxy.set("up")
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, err
        with psycopg.connect(db_url) as conn:
            klines = conn.execute(
                "SELECT count(DISTINCT date_trunc('day', ts)) FROM price_klines WHERE symbol = 'BTCUSDT'"
            ).fetchone()[0]
        assert klines == 5


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
        url = ex.base_url
        for cmd in (
            ["aggtrades", "--days", "2", "--no-progress"],
            ["market", "--mode", "historical", "--days", "2"],
        ):
            rc = main(
                [
                    *_base(db_url, tmp_path / "home"),
                    "collect",
                    *cmd,
                    "--symbol",
                    "BTCUSDT",
                    "--exchange-url",
                    url,
                ]
            )
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 1, err
            assert err[-1].startswith(
                f"microstructure: error: the exchange at {url} kept failing: GET {url}/fapi/v1/"
            )
            assert err[-1].endswith(
                ": HTTP 500 (gave up after 7 attempts); what was stored is kept, run again to continue"
            ), err[-1]
            assert not any("Traceback" in x for x in err)


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


def test_days_100000_is_clamped_and_never_silent_at_the_default_level(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # issue 29: "clamped to the listing date, then minutes of REST walking with no output at the
    # default level". Every day here is walked by REST (no archive), slowly; a heartbeat every 0.2 s
    # stands for the minute.
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.2)
    days = ("2024-05-17", "2024-05-18", "2024-05-19")
    cfg = _cfg(exchange_cache, listed_days=3, missing_archive_days=days, rest_delay=0.05)
    with ExchangeThread(cfg) as ex:
        rc = main([*_base(db_url, tmp_path / "home"), "collect", "aggtrades", "--symbol", "BTCUSDT",
                   "--days", "100000", "--no-progress", "--exchange-url", ex.base_url])  # fmt: skip
        err = capsys.readouterr().err
    assert rc == 0, err
    beats = [m.groups() for m in map(BEAT.search, err.splitlines()) if m]
    assert beats and {b[0] for b in beats} == {"aggTrades historical"}, err
    assert {b[2] for b in beats} == {"4"}  # the 3 days since the listing and today so far, not 100,000
    assert "Traceback" not in err and "level=warning" not in err and "level=error" not in err


def _in_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr; (exit code, what it showed)."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TERM": "xterm",
           "COLUMNS": "160", "LINES": "40"}  # fmt: skip
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "microstructure", *argv], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        rc = proc.wait(60)
    return rc, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize(
    "command", [["aggtrades", "--days", "3"], ["market", "--mode", "historical", "--days", "3"]]
)
def test_a_historical_load_on_a_terminal_shows_a_progress_bar(
    db_url: str, tmp_path: Path, exchange_cache: Path, command: list[str]
) -> None:
    with ExchangeThread(_cfg(exchange_cache)) as ex:
        argv = [*_base(db_url, tmp_path / "home"), "collect", *command, "--symbol", "BTCUSDT"]
        rc, shown = _in_a_terminal([*argv, "--exchange-url", ex.base_url])
    assert rc == 0, shown[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    bars = re.findall(r"BTCUSDT\s+━+\s+(\d+)/(\d+) days", plain)
    assert bars, plain[-3000:]
    totals = {t for _, t in bars}
    assert len(totals) == 1 and any(d == t for d, t in bars), bars  # one bar, drawn up to its end
    assert "microstructure.progress" not in plain  # the bar is the progress: no heartbeat beside it
