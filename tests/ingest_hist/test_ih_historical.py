"""Historical aggTrades end to end: local exchange (real HTTP) -> collector -> writer -> PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import sys
import time
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from ih_helpers import count_archive_requests, generator_trades, record_answers, run_collect, stored_rows

from microstructure.config import Settings
from microstructure.exchange.config import ExchangeConfig, FaultConfig
from microstructure.exchange.server import LocalExchange
from microstructure.ingest.collectors.trades_historical import UnknownSymbols, day_start_ms
from microstructure.ingest.sink import writer as writer_module

COLUMNS = ["agg_id", "ts_ms", "price", "quantity", "first_trade_id", "last_trade_id", "is_buyer_maker"]
D9, D10, D11, D12 = (date(2022, 8, d) for d in (9, 10, 11, 12))


def settings_for(tmp_path: Path, db_url: str, base_url: str) -> Settings:
    s = Settings(home=tmp_path / "home", database_url=db_url)
    s.point_at_exchange(base_url)
    return s


def exchange(cache: Path, **kw: Any) -> ExchangeConfig:
    kw.setdefault("history_days", 3)
    kw.setdefault("trades_per_day", 20_000)
    kw.setdefault("clock_start", datetime(2022, 8, 12, 6, 0, tzinfo=UTC))
    return ExchangeConfig(cache_dir=cache, **kw)


async def archive_rows(base_url: str, day: date) -> dict[str, list[Any]]:
    """An archive parsed independently of the collector (zipfile + csv module)."""
    url = f"{base_url}/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{day}.zip"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        body = await r.read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if not rows[0][0].isdigit():
        rows = rows[1:]
    conv = [int, int, float, float, int, int, lambda v: v == "true"]
    order = [0, 5, 1, 2, 3, 4, 6]  # archive column order -> AGG_TRADES order
    return {name: [conv[j](r[order[j]]) for r in rows] for j, name in enumerate(COLUMNS)}


def events(db_url: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(db_url) as conn:
        return [
            (k, d if isinstance(d, dict) else json.loads(d))
            for k, d in conn.execute("SELECT kind, detail FROM ingest_events ORDER BY id").fetchall()
        ]


def test_three_archived_days_plus_today_by_rest_land_the_exact_id_sequence(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            now_before = ex.now_ms()
            report = await run_collect(settings, db_url, ["btcusdt"], None, None, days=3)
            now_after = ex.now_ms()
            rep = report.symbols["BTCUSDT"]
            assert (report.start_day, report.end_day, report.today) == (D9, D12, D12)
            assert rep.days_archive == [D9, D10, D11] and rep.days_rest == [D12] and not rep.days_skipped
            assert not rep.gaps and not rep.errors and report.ok

            db = stored_rows(db_url, "BTCUSDT")
            ids = db["agg_id"]
            assert len(ids) == len(set(ids)), "an id is stored twice"
            first = ex.markets["BTCUSDT"].first_id()
            assert ids == list(range(first, first + len(ids))), "an id is missing"
            # everything up to the run's start is there, nothing after its end
            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, now_after + 1)
            n_before = sum(1 for t in ref["ts_ms"] if t <= now_before)
            assert n_before <= len(ids) <= len(ref["agg_id"])
            assert rep.rows == rep.stored_rows == len(ids)
            assert (rep.first_id, rep.last_id) == (first, ids[-1])

            # archived days: values equal to the archive's (parsed here independently)
            pos = 0
            for d in (D9, D10, D11):
                arc = await archive_rows(ex.base_url, d)
                n = len(arc["agg_id"])
                for col in COLUMNS:
                    assert db[col][pos : pos + n] == arc[col], (d, col)
                pos += n
            assert rep.rows_archive == pos
            # today's part from REST: equal to the exchange's own trades
            today = generator_trades(ex, "BTCUSDT", day_start_ms(D12), now_after + 1)
            m = len(ids) - pos
            assert m > 3000 and rep.rows_rest == m
            for col in COLUMNS:
                assert db[col][pos:] == today[col][:m], col

            # started again: complete days are skipped (no archive fetched), today goes on from its last id
            seen = count_archive_requests(ex)
            again = await run_collect(settings, db_url, ["BTCUSDT"], D9, D12)
            r2 = again.symbols["BTCUSDT"]
            assert r2.days_skipped == [D9, D10, D11] and r2.days_rest == [D12] and r2.rows_archive == 0
            assert seen == []
            assert r2.rows_rest < 200  # only what traded since the first run
            db2 = stored_rows(db_url, "BTCUSDT")["agg_id"]
            assert db2 == list(range(first, first + len(db2))) and len(db2) >= len(ids)
            assert again.ok

    asyncio.run(main())


def test_archives_fetched_ahead_download_one_at_a_time_oldest_first(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """The days fetched ahead download one after the other in the order asked (each zip's answer
    held 0.3 s here): the oldest day, which the first load waits for, does not share the link with
    the later ones and end with them."""

    async def main() -> list[tuple[str, float, float]]:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            served: list[tuple[str, float, float]] = []
            original = ex.archive_bytes

            async def slow(ref: Any) -> Any:
                t0 = time.monotonic()
                if ref.path.endswith(".zip"):
                    await asyncio.sleep(0.3)
                body = await original(ref)
                if ref.path.endswith(".zip"):
                    served.append((ref.date, t0, time.monotonic()))
                return body

            ex.archive_bytes = slow
            report = await run_collect(
                settings_for(tmp_path, db_url, ex.base_url), db_url, ["BTCUSDT"], D9, D11
            )
            assert report.ok and report.symbols["BTCUSDT"].days_archive == [D9, D10, D11]
            return served

    served = asyncio.run(main())
    # (the exchange reads a zip for its .CHECKSUM too)
    assert list(dict.fromkeys(s[0] for s in served)) == [str(d) for d in (D9, D10, D11)]
    for a, b in itertools.combinations(served, 2):
        if a[0] < b[0]:
            assert b[1] >= a[2], (a, b)  # a later day asked for once the day before was served


def test_429_storm_run_slows_down_finishes_exact_and_is_never_banned(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """The issue's 429-storm acceptance on a whole run: 3 archived days, today by REST pages, 30 % of
    REST answers an injected 429 (Retry-After: 1), and when the pages begin another program of the
    same IP has used the weight up, so the exchange's limiter answers a real 429 too, after which
    sending again before its Retry-After is a 418 ban. The run slows down, finishes with the exact
    id sequence, and the exchange (its own record, not the client's) never answered 418."""
    limit = 200  # weight per minute; today's pages after the real 429 fit in one minute
    cfg = exchange(
        exchange_cache,
        clock_start=datetime(2022, 8, 12, 6, 0, 52, tzinfo=UTC),  # the minute ends soon after the start
        weight_limit=limit,
        ban_seconds=600,
        faults=FaultConfig(rest_429_rate=0.3),
    )
    ex = LocalExchange(cfg)
    use_up = ex.limiter.check

    def other_program(request: aiohttp.web.Request) -> None:
        """Until the limiter has answered a real 429: before each REST page, the IP's weight is used up
        to 10 below the limit (a page weighs 20)."""
        if (
            answers.verdicts[429]
            or request.path != "/fapi/v1/aggTrades"
            or request.query.get("limit") != "1000"
        ):
            return
        client, now = request.remote or "?", ex.now_ms()
        missing = limit - 10 - ex.limiter.used(client, now)
        if missing > 0:
            use_up(client, missing, now)

    answers = record_answers(ex, on_request=other_program)

    async def main() -> None:
        async with ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            now_before = ex.now_ms()
            t0 = time.monotonic()
            report = await run_collect(settings, db_url, ["BTCUSDT"], None, None, days=3)
            elapsed = time.monotonic() - t0
            now_after = ex.now_ms()
            rep = report.symbols["BTCUSDT"]
            assert rep.days_archive == [D9, D10, D11] and rep.days_rest == [D12] and report.ok, rep.errors

            # finished with the exact id sequence: none missing, none doubled, today's part from REST
            ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
            first = ex.markets["BTCUSDT"].first_id()
            assert ids == list(range(first, first + len(ids)))
            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, now_after + 1)
            n_before = sum(1 for t in ref["ts_ms"] if t <= now_before)
            assert n_before <= len(ids) <= len(ref["agg_id"])
            assert ids == ref["agg_id"][: len(ids)]
            assert rep.rows_rest > 3000 and rep.rest_pages >= 4

            # slowed down: the exchange answered 429s (injected ones and at least one real weight overrun),
            # the client counted each of them, and the run took at least the sum of their Retry-After
            statuses = answers.statuses()
            assert answers.verdicts[429] >= 1, "the limiter never answered 429: a ban was not possible"
            assert statuses[429] > answers.verdicts[429], "no injected 429"
            assert report.rest.rate_limited == statuses[429]
            assert elapsed >= answers.retry_after_total(429)
            # and never banned, by the exchange's own record
            assert statuses[418] == 0 and answers.verdicts[418] == 0
            assert all(u.banned_until == 0 for u in ex.limiter.clients.values())

    asyncio.run(main())


def test_missing_archive_from_rest_checksum_mismatch_refused_and_recorded(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    faults = FaultConfig(missing_archive_days=(str(D10),), bad_checksum_days=(str(D11),))

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache, faults=faults)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            report = await run_collect(settings, db_url, ["BTCUSDT"], D9, D12)
            now_after = ex.now_ms()
            rep = report.symbols["BTCUSDT"]
            assert rep.days_archive == [D9]
            assert rep.days_rest == [D10, D12]
            assert rep.days_refused == [D11]
            assert rep.archives_missing == [str(D10)]
            assert len(rep.errors) == 1 and "2022-08-11" in rep.errors[0] and "checksum" in rep.errors[0]
            assert not report.ok

            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, now_after + 1)
            d11 = [
                a
                for a, t in zip(ref["agg_id"], ref["ts_ms"], strict=True)
                if day_start_ms(D11) <= t < day_start_ms(D12)
            ]
            # the gap left is exactly the refused day
            assert [(g.from_id, g.to_id) for g in rep.gaps] == [(d11[0], d11[-1])]
            db = stored_rows(db_url, "BTCUSDT")
            want = [a for a, t in zip(ref["agg_id"], ref["ts_ms"], strict=True) if t < day_start_ms(D11)]
            got = db["agg_id"]
            assert got[: len(want)] == want  # D9 from the archive, D10 from REST
            assert got[len(want)] == d11[-1] + 1  # today starts right after the refused day
            assert got[len(want) :] == list(range(d11[-1] + 1, d11[-1] + 1 + len(got) - len(want)))
            k = len(want)
            for col in COLUMNS:
                assert db[col][:k] == ref[col][:k], col
            kinds = {k: d for k, d in events(db_url)}
            assert (
                kinds["archive_missing"]["day"] == str(D10)
                and kinds["archive_missing"]["filled_from"] == "rest"
            )
            assert str(D11) in kinds["checksum_mismatch"]["period"]
            assert kinds["checksum_mismatch"]["expected"] != kinds["checksum_mismatch"]["actual"]

    asyncio.run(main())


def test_a_whole_past_month_comes_from_the_monthly_archive(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    cfg = exchange(
        exchange_cache,
        history_days=35,
        trades_per_day=600,
        clock_start=datetime(2024, 3, 2, 1, 0, tzinfo=UTC),
        faults=FaultConfig(monthly_disorder=True),
    )

    async def main() -> None:
        async with LocalExchange(cfg) as ex:
            seen = count_archive_requests(ex)
            settings = settings_for(tmp_path, db_url, ex.base_url)
            report = await run_collect(settings, db_url, ["BTCUSDT"], date(2024, 2, 1), date(2024, 3, 2))
            now_after = ex.now_ms()
            rep = report.symbols["BTCUSDT"]
            feb = [date(2024, 2, 1) + timedelta(days=i) for i in range(29)]
            assert rep.months_archive == ["2024-02"]
            assert rep.days_archive == [*feb, date(2024, 3, 1)] and rep.days_rest == [date(2024, 3, 2)]
            assert rep.duplicate_rows > 0  # the monthly file repeated rows; none stored twice
            assert sorted({p.rsplit("/", 1)[1] for p in seen}) == [
                "BTCUSDT-aggTrades-2024-02.zip",
                "BTCUSDT-aggTrades-2024-03-01.zip",
            ]
            ref = generator_trades(ex, "BTCUSDT", day_start_ms(date(2024, 2, 1)), now_after + 1)
            db = stored_rows(db_url, "BTCUSDT")
            n = len(db["agg_id"])
            assert n == rep.stored_rows and len(set(db["agg_id"])) == n
            for col in COLUMNS:
                assert db[col] == ref[col][:n], col
            assert not rep.gaps

    asyncio.run(main())


def test_unknown_symbol_is_refused_before_any_download(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            seen = count_archive_requests(ex)
            settings = settings_for(tmp_path, db_url, ex.base_url)
            with pytest.raises(UnknownSymbols, match="NOPEUSDT") as info:
                await run_collect(settings, db_url, ["BTCUSDT", "nopeusdt"], D9, D12)
            assert info.value.symbols == ["NOPEUSDT"] and "BTCUSDT" not in str(info.value)
            assert seen == []
        assert stored_rows(db_url, "BTCUSDT")["agg_id"] == []

    asyncio.run(main())


def test_interrupted_state_is_completed_without_reloading_or_doubling(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """What a killed run leaves (a day cut in the middle, today half loaded) is completed exactly."""

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            import asyncpg
            import pyarrow as pa

            writer = writer_module
            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, ex.now_ms() + 1)
            cut_d10 = day_start_ms(D10) + 10 * 3_600_000
            cut_d12 = day_start_ms(D12) + 3 * 3_600_000
            keep = [i for i, t in enumerate(ref["ts_ms"]) if t < cut_d10 or day_start_ms(D11) <= t < cut_d12]
            table = pa.table({c: [ref[c][i] for i in keep] for c in COLUMNS}).append_column(
                "recv_ms", pa.nulls(len(keep), pa.int64())
            )
            conn = await asyncpg.connect(db_url)
            try:
                await writer.write_batch(conn, "agg_trades", "BTCUSDT", table)
            finally:
                await conn.close()
            settings = settings_for(tmp_path, db_url, ex.base_url)
            report = await run_collect(settings, db_url, ["BTCUSDT"], D9, D12)
            now_after = ex.now_ms()
            rep = report.symbols["BTCUSDT"]
            # D9 complete (joins D10's first id); D10 cut: reloaded from its archive; D11 complete; today resumed
            assert sorted(rep.days_skipped) == [D9, D11]
            assert rep.days_archive == [D10] and rep.days_rest == [D12]
            t_rest = [t for t in ref["ts_ms"] if cut_d12 <= t]
            assert rep.rows_rest <= len(t_rest) + 200  # today went on from its last stored id
            full = generator_trades(ex, "BTCUSDT", ex.origin_ms, now_after + 1)
            db = stored_rows(db_url, "BTCUSDT")
            n = len(db["agg_id"])
            assert len(set(db["agg_id"])) == n
            for col in COLUMNS:
                assert db[col] == full[col][:n], col
            assert full["ts_ms"][n - 1] >= cut_d12 and not rep.gaps

    asyncio.run(main())


def test_a_day_stored_only_from_its_middle_is_loaded_even_when_the_next_day_joins(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """E.g. a live collector started at noon: that day is dense and joins the next, but lacks its morning."""

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache)) as ex:
            import asyncpg
            import pyarrow as pa

            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, ex.now_ms() + 1)
            noon = day_start_ms(D10) + 12 * 3_600_000
            keep = [i for i, t in enumerate(ref["ts_ms"]) if noon <= t < day_start_ms(D12)]
            table = pa.table({c: [ref[c][i] for i in keep] for c in COLUMNS}).append_column(
                "recv_ms", pa.nulls(len(keep), pa.int64())
            )
            conn = await asyncpg.connect(db_url)
            try:
                await writer_module.write_batch(conn, "agg_trades", "BTCUSDT", table)
            finally:
                await conn.close()
            seen = count_archive_requests(ex)
            settings = settings_for(tmp_path, db_url, ex.base_url)
            report = await run_collect(settings, db_url, ["BTCUSDT"], D10, D11)
            rep = report.symbols["BTCUSDT"]
            assert rep.days_archive == [D10] and rep.days_skipped == [D11] and not rep.days_rest
            assert {p.rsplit("/", 1)[1] for p in seen} == {"BTCUSDT-aggTrades-2022-08-10.zip"}
            db = stored_rows(db_url, "BTCUSDT")
            want = [i for i, t in enumerate(ref["ts_ms"]) if day_start_ms(D10) <= t < day_start_ms(D12)]
            for col in COLUMNS:
                assert db[col] == [ref[col][i] for i in want], col
            assert report.ok

    asyncio.run(main())


def test_progress_bars_on_a_terminal_only(
    db_url: str,
    tmp_path: Path,
    exchange_cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run(progress: bool) -> None:
        from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

        async with LocalExchange(exchange(exchange_cache, trades_per_day=4_000)) as ex:
            settings = settings_for(tmp_path, db_url, ex.base_url)
            w = writer_module.Writer(db_url, settings.home / "spill")
            await w.start()
            try:
                await collect_aggtrades_historical(
                    settings, db_url, ["BTCUSDT"], D11, D12, progress=progress, writer=w
                )
            finally:
                await w.close()

    asyncio.run(run(True))  # captured stderr is not a terminal: no bars
    assert "rows/s" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    asyncio.run(run(False))
    assert "rows/s" not in capsys.readouterr().err
    asyncio.run(run(True))
    err = capsys.readouterr().err
    assert "BTCUSDT" in err and "rows/s" in err and "2/2" in err and "days" in err


def test_days_beyond_the_listing_start_at_the_onboard_date(
    db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    """`--days 100000` walks no day before exchangeInfo's onboardDate: no archive asked for, no REST
    page spent; the run starts at the listing day and stores exactly what exists."""

    async def main() -> None:
        async with LocalExchange(exchange(exchange_cache, listed_days=2)) as ex:
            seen = count_archive_requests(ex)
            settings = settings_for(tmp_path, db_url, ex.base_url)
            rep = await run_collect(settings, db_url, ["BTCUSDT"], None, None, days=100_000)
            assert rep.start_day == D10 and rep.end_day == D12  # listed on 2022-08-10, today 08-12
            assert seen and all(("2022-08-10" in p or "2022-08-11" in p) for p in seen), seen
            ids = stored_rows(db_url, "BTCUSDT")["agg_id"]
            ref = generator_trades(ex, "BTCUSDT", day_start_ms(D10), ex.now_ms())["agg_id"]
            assert ids == ref[: len(ids)] and len(ids) >= len(ref) - 1000

    asyncio.run(main())
