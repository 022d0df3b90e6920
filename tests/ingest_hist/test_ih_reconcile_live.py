"""A live `collect all` over a day boundary heals the finished day from its archive by itself."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import aiohttp
import numpy as np
import psycopg

from microstructure.config import Settings
from microstructure.exchange import healable
from microstructure.exchange.config import ExchangeConfig
from microstructure.exchange.server import ExchangeThread
from microstructure.features_sql.refresher import refresh_once
from microstructure.ingest.collectors.all import collect_all
from microstructure.status import collect_status

DAY = date(2024, 3, 6)
SYMBOL = "BTCUSDT"


def q(dsn: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args or None).fetchall()


async def archive_rows(url: str) -> list[list[str]]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        body = await r.read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        rows = list(csv.reader(zf.read(zf.namelist()[0]).decode().splitlines()))
    return rows[1:] if rows and not rows[0][0].isdigit() else rows


async def wait_for(dsn: str, sql: str, want: object, seconds: float, *args: object) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if q(dsn, sql, *args) == want:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{sql}: {q(dsn, sql, *args)} != {want}")


def test_live_run_over_midnight_heals_the_finished_day(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    cfg = ExchangeConfig(
        symbols=(SYMBOL,), seed=3, history_days=1, trades_per_day=3_000, live_rate=25.0,
        clock_start=datetime(2024, 3, 6, 23, 59, 52, tzinfo=UTC), cache_dir=exchange_cache / "live-reconcile",
    )  # fmt: skip
    cfg.faults.withhold_agg_trades = 0.05  # ids the websocket and REST never serve
    cfg.faults.differ_agg_trades = 0.05  # ids the websocket and REST serve one tick off the archive
    with ExchangeThread(cfg) as ex:
        settings = Settings(home=tmp_path / "home", database_url=db_url)
        settings.point_at_exchange(ex.base_url)
        url = ex.archive_url("aggTrades", SYMBOL, DAY)

        async def main() -> object:
            stop = asyncio.Event()
            run = asyncio.create_task(
                collect_all(
                    settings, db_url, [SYMBOL], mode="live", stop_event=stop, handle_signals=False,
                    features_interval=None, reconcile_interval=1.0,
                )
            )  # fmt: skip
            try:
                # the day ends 8 s into the run; its archive is published at once by the local exchange
                await wait_for(
                    db_url, "SELECT count(*) FROM archive_verified WHERE dataset = 'aggTrades' AND day = %s",
                    [(1,)], 45, DAY,
                )  # fmt: skip
                first = q(db_url, "SELECT min(agg_id) FROM agg_trades WHERE recv_ts IS NOT NULL")[0][0]
                rows = await archive_rows(url)
                ids = np.array([int(r[0]) for r in rows])
                live_ids = ids[ids >= first]
                withheld = live_ids[healable.withheld(live_ids, cfg.seed, cfg.faults)]
                assert len(withheld) >= 3  # the live part of the day lost ids only the archive has
                stored = q(
                    db_url,
                    "SELECT agg_id, (extract(epoch FROM ts) * 1000)::bigint, price, quantity, first_trade_id, "
                    "last_trade_id, is_buyer_maker FROM agg_trades WHERE symbol = %s AND ts < %s ORDER BY agg_id",
                    SYMBOL, datetime(2024, 3, 7, tzinfo=UTC),
                )  # fmt: skip
                want = [
                    (int(r[0]), int(r[5]), float(r[1]), float(r[2]), int(r[3]), int(r[4]), r[6] == "true")
                    for r in rows
                ]
                assert stored == want  # the whole day, withheld ids included, as the archive has it
                missing, differing = q(
                    db_url, "SELECT (detail->>'missing')::bigint, (detail->>'differing')::bigint FROM ingest_events "
                    "WHERE collector = 'reconcile' AND kind = 'reconciled' ORDER BY id LIMIT 1",
                )[0]  # fmt: skip
                assert missing >= len(withheld)  # they were not stored before the archive came
                served = live_ids[~healable.withheld(live_ids, cfg.seed, cfg.faults)]
                bumped = served[healable.differing(served, cfg.seed, cfg.faults)]
                assert 1 <= differing <= len(bumped)  # live prices the archive corrected
                # the live collector had recorded them as gaps (REST could not fill them); the archive did
                filled = q(
                    db_url, "SELECT count(*) FROM agg_trade_gaps WHERE status = 'filled' AND from_id >= %s "
                    "AND to_id <= %s", int(first), int(ids[-1]),
                )[0][0]  # fmt: skip
                assert filled >= 1
                # status: the day verified, no id lost, no gap left in it
                day_row = next(r for r in collect_status(db_url, days=3).days if r["day"] == DAY)
                sha = await _checksum(url)
                assert (day_row["lost_ids"], day_row["loss_spans"], day_row["verified_sha256"]) == (0, 0, sha)
                assert q(
                    db_url, "SELECT count(*) FROM agg_trade_gaps WHERE status <> 'filled' AND to_id <= %s",
                    int(ids[-1]),
                ) == [(0,)]  # fmt: skip
                assert q(db_url, "SELECT missing_count FROM agg_trade_coverage WHERE day = %s", DAY) == [(0,)]
                # bookDepth and metrics of the finished day come from their archives
                await wait_for(
                    db_url, "SELECT dataset FROM archive_verified WHERE day = %s AND dataset <> 'aggTrades' "
                    "ORDER BY 1", [("bookDepth",), ("metrics",)], 15, DAY,
                )  # fmt: skip
                bands = await archive_rows(ex.archive_url("bookDepth", SYMBOL, DAY))
                assert q(db_url, "SELECT count(*) FROM book_depth_bands WHERE ts < '2024-03-07'") == [
                    (len(bands),)
                ]
                # the load logged the day for the features: a refresh fills the band columns of
                # every minute of the live-collected day (a bookDepth snapshot every ~30 s)
                await refresh_once(db_url)
                assert q(
                    db_url, "SELECT count(*), count(depth_imbalance_1pct), count(bid_depth_5pct), "
                    "count(depth_imbalance_0p2pct) FROM features_1m WHERE bucket >= %s AND bucket < %s",
                    datetime(2024, 3, 6, tzinfo=UTC), datetime(2024, 3, 7, tzinfo=UTC),
                ) == [(1440, 1440, 1440, 0)]  # fmt: skip

                # a re-upload (new checksum) is noticed by a later round and reconciled again
                ex.reupload_archive("aggTrades", SYMBOL, DAY)
                ex.reupload_archive("bookDepth", SYMBOL, DAY)
                new_sha = await _checksum(url)
                assert new_sha != sha
                await wait_for(
                    db_url, "SELECT sha256, missing, differing, extra FROM archive_verified "
                    "WHERE dataset = 'aggTrades' AND day = %s", [(new_sha, 0, 1, 0)], 15, DAY,
                )  # fmt: skip
                new_bands = await _checksum(ex.archive_url("bookDepth", SYMBOL, DAY))
                await wait_for(
                    db_url, "SELECT sha256 FROM archive_verified WHERE dataset = 'bookDepth' AND day = %s",
                    [(new_bands,)], 15, DAY,
                )  # fmt: skip
                assert q(db_url, "SELECT count(*) FROM book_depth_bands WHERE ts < '2024-03-07'") == [
                    (len(bands),)
                ]
            finally:
                stop.set()
            return await run

        report = asyncio.run(main())
        lines = "\n".join(report.summary_lines())  # type: ignore[attr-defined]
        assert "reconcile:" in lines and "trade days verified against their archive" in lines


async def _checksum(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + ".CHECKSUM") as r:
        return (await r.text()).split()[0]
