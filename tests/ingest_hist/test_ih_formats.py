"""Historical aggTrades against the format drift of real archives (issue 12), served by the local
exchange over real HTTP: microsecond times, headerless files, True/False, a trailing is_best_match,
and a spot-format file at a USD-M path (the day fails, nothing of it covered, exit code 1)."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import psycopg
import pytest
from ih_helpers import generator_trades, run_collect, stored_rows

from microstructure.cli import main
from microstructure.config import Settings
from microstructure.exchange.config import ExchangeConfig, FormatConfig
from microstructure.exchange.server import ExchangeThread, LocalExchange

NAMES = [
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
]
CLOCK = datetime(2024, 5, 20, 2, 0, tzinfo=UTC)
D18, D19, D20 = date(2024, 5, 18), date(2024, 5, 19), date(2024, 5, 20)


async def archive_frame(base_url: str, day: date) -> tuple[pd.DataFrame, str]:
    """The day's aggTrades archive as pandas reads it (the oracle), and its first line."""
    url = f"{base_url}/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{day}.zip"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        body = await r.read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    first = text.split("\n", 1)[0]
    header = 0 if not first[:1].isdigit() else None
    n = len(first.split(","))
    names = NAMES + ["is_best_match"] * (n - len(NAMES))
    frame = pd.read_csv(io.StringIO(text), header=header, names=names)
    return frame, first


def assert_stored_equals_archive(db_url: str, frame: pd.DataFrame, day: date) -> None:
    got = stored_rows(db_url, "BTCUSDT")
    t0 = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    sel = [i for i, t in enumerate(got["ts_ms"]) if t0 <= t < t0 + 86_400_000]
    assert len(sel) == len(frame) > 0
    pick = {k: [v[i] for i in sel] for k, v in got.items()}
    assert pick["agg_id"] == frame["agg_trade_id"].tolist()
    times = frame["transact_time"].to_numpy(np.int64)
    want_ms = times // 1000 if times[0] >= 10**15 else times
    assert pick["ts_ms"] == want_ms.tolist()
    assert pick["price"] == frame["price"].tolist() and pick["quantity"] == frame["quantity"].tolist()
    assert pick["first_trade_id"] == frame["first_trade_id"].tolist()
    assert pick["last_trade_id"] == frame["last_trade_id"].tolist()
    assert pick["is_buyer_maker"] == frame["is_buyer_maker"].astype(str).str.lower().eq("true").tolist()


@pytest.mark.parametrize(
    "formats",
    [
        FormatConfig(archive_time_unit="us", archive_booleans="title", archive_extra_column=True),
        FormatConfig(archive_headers="never", archive_time_unit="us"),
    ],
    ids=["us-title-is_best_match", "us-headerless"],
)
def test_microsecond_and_headerless_archives_land_as_the_millisecond_trades(
    formats: FormatConfig, db_url: str, tmp_path: Path, exchange_cache: Path
) -> None:
    cfg = ExchangeConfig(
        history_days=2, trades_per_day=6_000, clock_start=CLOCK, cache_dir=exchange_cache, formats=formats
    )

    async def main_() -> tuple[Any, dict[date, tuple[pd.DataFrame, str]], dict[str, list[Any]]]:
        async with LocalExchange(cfg) as ex:
            settings = Settings(home=tmp_path / "home", database_url=db_url)
            settings.point_at_exchange(ex.base_url)
            report = await run_collect(settings, db_url, ["BTCUSDT"], D18, D20)
            frames = {d: await archive_frame(ex.base_url, d) for d in (D18, D19)}
            ref = generator_trades(ex, "BTCUSDT", ex.origin_ms, ex.now_ms() - 5_000)
            return report, frames, ref

    report, frames, ref = asyncio.run(main_())
    rep = report.symbols["BTCUSDT"]
    assert report.ok and rep.days_archive == [D18, D19] and rep.days_rest == [D20] and rep.malformed_rows == 0
    assert rep.format_notes["epoch times in microseconds (16 digits), stored as milliseconds"] == 2
    if formats.archive_extra_column:
        assert frames[D18][1].endswith(",is_best_match")
        assert rep.format_notes["column is_best_match ignored (not one of the aggTrades columns)"] == 2
    else:
        assert frames[D18][1][:1].isdigit()
    for d, (frame, _) in frames.items():
        assert_stored_equals_archive(db_url, frame, d)
    got = stored_rows(db_url, "BTCUSDT")  # and the exchange's own trades, REST's today included
    n = len(ref["agg_id"])
    for col, values in ref.items():
        assert got[col][:n] == values, col


def test_a_spot_file_at_a_usdm_path_fails_its_day_with_the_reason_and_exit_code_1(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ExchangeConfig(
        history_days=3,
        trades_per_day=6_000,
        clock_start=CLOCK,
        cache_dir=exchange_cache,
        formats=FormatConfig(spot_archive_days=(D18.isoformat(),)),
    )
    with ExchangeThread(cfg) as ex:
        rc = main(
            ["--database-url", db_url, "--home", str(tmp_path / "home"), "collect", "aggtrades",
             "--symbol", "BTCUSDT", "--start", "2024-05-17", "--end", "2024-05-19", "--no-progress",
             "--exchange-url", ex.base_url]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("microstructure: error:")]
    assert len(errors) == 1, captured.err
    assert "BTCUSDT 2024-05-18: day refused: archive BTCUSDT-aggTrades-2024-05-18.zip not loaded" in errors[0]
    assert (
        "no valid row" in errors[0] and "8 fields, expected 7" in errors[0] and "spot aggTrades" in errors[0]
    )
    assert "Traceback" not in captured.err
    out = captured.out
    assert "1 refused" in out
    malformed = next(line for line in out.splitlines() if "malformed rows skipped" in line)
    assert "2024-05-18: " in malformed and "FAILED" in malformed  # malformed counts per day
    with psycopg.connect(db_url) as conn:
        days = [r[0] for r in conn.execute("SELECT day FROM agg_trade_coverage ORDER BY day").fetchall()]
        assert days == [date(2024, 5, 17), D19]  # nothing of the failed day is covered
        stored = conn.execute(
            "SELECT count(*) FROM agg_trades WHERE ts >= '2024-05-18' AND ts < '2024-05-19'"
        ).fetchone()[0]
        assert stored == 0
        (detail,) = conn.execute("SELECT detail FROM ingest_events WHERE kind = 'archive_failed'").fetchone()
        detail = detail if isinstance(detail, dict) else json.loads(detail)
        assert detail["period"] == "2024-05-18" and detail["rows"] == 0 and detail["malformed"] > 1000
        (sample,) = conn.execute("SELECT detail FROM ingest_events WHERE kind = 'malformed'").fetchone()
        first = (sample if isinstance(sample, dict) else json.loads(sample))["sample"][0]
        assert first["row"].endswith(",True") and len(first["row"].split(",")) == 8
        assert first["reason"].startswith("8 fields, expected 7 (agg_trade_id,")
