"""A live run that did not do its job is not ok and exits 1 with a one-line reason: a symbol of which
nothing was stored, every open-interest poll failed, batches spilled or refused at exit."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from ib_helpers import collect_cmd, exchange_config, settings_for

from microstructure.exchange import ExchangeThread, LocalExchange
from microstructure.ingest.collectors import all as collect_all_module
from microstructure.ingest.collectors.all import AllReport, collect_all
from microstructure.ingest.collectors.book import BookReport
from microstructure.ingest.collectors.market import MarketReport, liquidations_table
from microstructure.ingest.sink.writer import Writer

DEAD_DSN = "postgresql://postgres:postgres@127.0.0.1:1/none"  # nothing listens on port 1


def test_problems_of_the_reports() -> None:
    book = BookReport(["BTCUSDT", "ETHUSDT"], "depth20", seconds=5.0)
    book.rows["BTCUSDT"] = 10
    assert book.problems() == ["no book snapshot stored for ETHUSDT in 5.0 s"] and not book.ok
    book.rows["ETHUSDT"] = 3
    assert book.ok
    book.batches_left, book.batches_rejected = 2, 1
    assert len(book.problems()) == 2 and not book.ok

    market = MarketReport(["BTCUSDT"], seconds=5.0)
    assert market.problems() == ["no mark price stored for BTCUSDT in 5.0 s"]
    market.mark_rows["BTCUSDT"] = 5
    assert market.ok  # no open-interest poll finished yet: not a failure
    market.oi_failed["BTCUSDT"], market.poll_misses["BTCUSDT"] = 2, 8
    assert market.problems() == ["every open-interest poll of BTCUSDT failed (8 misses)"]
    market.oi_polls["BTCUSDT"] = 1
    assert market.ok  # no funding settlement or liquidation in a run is normal

    everything = AllReport("live", ["BTCUSDT"], parts={"market": market, "book": book})
    assert not everything.ok and everything.problems()[0].startswith("book: ")
    book.batches_left = book.batches_rejected = 0
    assert everything.ok
    everything.spill_pending = 4
    assert everything.problems() == [
        "4 batches left in spill files (not in the database; replayed on the next start)"
    ]


def _cli(db_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = collect_cmd(db_url, home, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_cli_exits_1_with_the_reason_when_nothing_was_stored(db_url, ib_cache, tmp_path) -> None:
    cfg = exchange_config(ib_cache, symbols=("BTCUSDT",))
    cfg.faults.rest_malformed = 1.0
    cfg.faults.rest_malformed_paths = ("/fapi/v1/openInterest",)
    with ExchangeThread(cfg) as ex:
        common = ["--symbol", "BTCUSDT", "--exchange-url", ex.base_url, "--live-seconds", "3"]
        market = _cli(db_url, tmp_path, "market", *common, "--oi-interval", "1")
        ex.config.faults.ws_malformed = 1.0  # every websocket message arrives broken
        book = _cli(db_url, tmp_path, "book-depth", *common)
    assert market.returncode == 1, market.stderr[-2000:]
    last = market.stderr.strip().splitlines()[-1]
    assert last.startswith("microstructure: error: every open-interest poll of BTCUSDT failed"), last
    assert "mark prices" in market.stdout  # the summary still comes first
    assert book.returncode == 1, book.stderr[-2000:]
    last = book.stderr.strip().splitlines()[-1]
    assert last.startswith("microstructure: error: no book snapshot stored for BTCUSDT in "), last


def test_collect_all_not_ok_when_batches_stay_spilled(db_url, ib_cache, tmp_path, monkeypatch) -> None:
    async def dead_writer(settings, dsn):  # the database goes away: every batch spills
        w = Writer(DEAD_DSN, Path(settings.home) / "spill", close_timeout=0.5, max_backoff=0.2)
        await w.start()
        return w

    monkeypatch.setattr(collect_all_module, "open_writer", dead_writer)

    async def go():
        async with LocalExchange(exchange_config(ib_cache)) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            return await collect_all(
                settings, db_url, ["BTCUSDT"], live_seconds=3.0, handle_signals=False, include_aggtrades=False
            )

    report = asyncio.run(go())
    assert report.parts["book"].ok and report.parts["market"].ok  # they handed rows over
    assert report.spill_pending == report.spill_files_left > 0
    assert not report.ok
    assert report.problems() == [
        f"{report.spill_pending} batches left in spill files (not in the database; replayed on the next start)"
    ]
    assert f"spill files left: {report.spill_files_left}" in report.summary_lines()[-1]


def test_collect_all_not_ok_when_a_batch_is_refused(db_url, ib_cache, tmp_path) -> None:
    async def leave_a_bad_batch() -> None:  # an earlier run spilled a batch the database refuses
        w = Writer(DEAD_DSN, tmp_path / "spill", close_timeout=0.2, max_backoff=0.1)
        await w.start()
        row = (1, 1, "HOLD", None, None, 1.0, 1.0, None, None, None, None, 1)  # side is BUY or SELL
        w.submit_nowait("liquidations", "BTCUSDT", liquidations_table([row]))
        await w.close()

    async def go():
        await leave_a_bad_batch()
        assert [p.name for p in (tmp_path / "spill").iterdir()] != []
        async with LocalExchange(exchange_config(ib_cache)) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            return await collect_all(
                settings, db_url, ["BTCUSDT"], live_seconds=3.0, handle_signals=False, include_aggtrades=False
            )

    report = asyncio.run(go())
    assert report.batches_rejected == 1 and report.spill_pending == 0
    assert report.problems() == ["1 batches refused by the database (moved to spill/rejected)"]
