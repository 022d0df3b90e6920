"""The hourly Parquet export: every type round-trips hour by hour (pyarrow.dataset, DuckDB, pandas,
polars), re-exports are byte-identical and leave files alone, a late write rewrites exactly the
hours it changed, a SIGKILL leaves nothing partial, and bad input is one line with exit code 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from ex_helpers import HOUR_MS, SYMBOLS, T0, run, write_hours, write_late

from microstructure.cli import main
from microstructure.export.exporter import export_once, read_rows
from microstructure.export.types import DEFAULT_TYPES, TYPES


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def hour_of(path: Path) -> datetime:
    """The hour a .../<YYYY>/<MM>/<DD>/hour=<HH>/data.parquet file holds."""
    y, m, d, h = path.parts[-5:-1]
    return datetime(int(y), int(m), int(d), int(h.removeprefix("hour=")), tzinfo=UTC)


def files(root: Path) -> dict[Path, tuple[int, int]]:
    """Every data.parquet under root: (mtime_ns, size)."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("data.parquet"))}


def db_hour(dsn: str, type_name: str, symbol: str, hour_ms: int) -> pa.Table:
    return read_rows(dsn, TYPES[type_name], symbol, at(hour_ms), at(hour_ms + HOUR_MS))


@pytest.fixture
def exported(db_url: str, tmp_path: Path) -> tuple[str, Path]:
    run(write_hours(db_url))
    out = tmp_path / "data"
    report = export_once(db_url, out, types=list(TYPES))
    assert report.files_written > 0
    return db_url, out


def test_every_type_round_trips_hour_by_hour(exported: tuple[str, Path]) -> None:
    dsn, out = exported
    for name in TYPES:
        for symbol in SYMBOLS:
            paths = sorted((out / name / symbol).rglob("data.parquet"))
            assert paths, f"{name} {symbol}: no files"
            for path in paths:
                got = pq.read_table(path)
                hour = hour_of(path)
                want = db_hour(dsn, name, symbol, int(hour.timestamp() * 1000))
                assert got.schema.names == want.schema.names and got.num_rows == want.num_rows > 0, path
                assert got.equals(want.cast(got.schema)), path  # values and order
                assert got.schema == want.schema.remove_metadata() or got.schema.equals(
                    want.schema, check_metadata=False
                )
                assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "SNAPPY"
    # the brief's aggtrades schema, times as int64 ms
    schema = pq.read_schema(next((out / "aggtrades").rglob("data.parquet")))
    assert schema.names == [
        "timestamp",
        "trade_id",
        "price",
        "quantity",
        "is_buyer_maker",
        "first_trade_id",
        "last_trade_id",
        "symbol",
    ]
    assert [str(schema.field(n).type) for n in schema.names] == [
        "int64",
        "int64",
        "double",
        "double",
        "bool",
        "int64",
        "int64",
        "string",
    ]


def test_readers_see_the_same_rows(exported: tuple[str, Path]) -> None:
    dsn, out = exported
    with psycopg.connect(dsn) as conn:
        n_trades = conn.execute("SELECT count(*) FROM agg_trades").fetchone()[0]
        n_bars = conn.execute("SELECT count(*) FROM features_1m").fetchone()[0]
        vol = conn.execute("SELECT sum(volume) FROM features_1m WHERE symbol = %s", (SYMBOLS[0],)).fetchone()[
            0
        ]
    glob = str(out / "aggtrades" / "*" / "*" / "*" / "*" / "*" / "data.parquet")
    assert (
        duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()[0][0]
        == n_trades
    )
    assert ds.dataset(out / "aggtrades", format="parquet").count_rows() == n_trades
    frames = pd.read_parquet(out / "features_1m" / SYMBOLS[0])  # pandas over a folder
    assert frames["volume"].sum() == pytest.approx(vol, rel=1e-12)
    import polars as pl

    bars = (
        pl.scan_parquet(str(out / "features_1m" / "*" / "**" / "data.parquet"))
        .select(pl.len())
        .collect()
        .item()
    )
    assert bars == n_bars
    # each type's time column is readable without the path
    hours = duckdb.sql(
        f"SELECT count(DISTINCT (symbol, timestamp // 3600000)) FROM read_parquet('{glob}')"
    ).fetchall()[0][0]
    assert hours == len(list((out / "aggtrades").rglob("data.parquet")))


def test_an_unchanged_re_export_keeps_bytes_and_mtime_and_zstd_is_available(
    exported: tuple[str, Path], tmp_path: Path
) -> None:
    dsn, out = exported
    before = files(out)
    sums = {p: p.read_bytes() for p in before}
    report = export_once(dsn, out, types=list(TYPES))
    assert report.files_written == 0
    # a range re-export looks at the hours again and finds equal bytes
    again = export_once(dsn, out, types=["aggtrades", "features_1m"], start=at(T0), end=at(T0 + 3 * HOUR_MS))
    assert again.files_written == 0 and again.types["aggtrades"].unchanged == 2 * 3
    assert files(out) == before and all(p.read_bytes() == sums[p] for p in before)
    # a fresh folder from the same rows: byte-identical files
    other = tmp_path / "again"
    export_once(dsn, other, types=list(TYPES))
    assert {p.relative_to(out): p.read_bytes() for p in before} == {
        p.relative_to(other): p.read_bytes() for p in files(other)
    }
    z = tmp_path / "zstd"
    export_once(dsn, z, types=["aggtrades"], compression="zstd")
    f = next(z.rglob("data.parquet"))
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_late_backfill_rewrites_exactly_the_hours_it_changed(db_url: str, tmp_path: Path) -> None:
    held_id = 4_000  # a trade of the second hour (20:00 + ~1.3 h)
    state = run(write_hours(db_url, hold_back=held_id))
    late = state["held"]
    late_hour = int(late.column("ts_ms")[0].as_py()) // HOUR_MS * HOUR_MS
    out = tmp_path / "data"
    export_once(db_url, out, types=list(DEFAULT_TYPES))
    before = files(out)
    time.sleep(0.01)
    run(write_late(db_url, SYMBOLS[0], late))
    report = export_once(db_url, out, types=list(DEFAULT_TYPES))
    after = files(out)
    changed = {p.relative_to(out) for p in after if after[p] != before.get(p)}
    day = at(late_hour)
    hour_dir = f"{day:%Y}/{day:%m}/{day:%d}/hour={day:%H}"
    # the trade's hour of aggtrades and of every timeframe's features; later feature hours of the day
    # change too where cvd (which runs from 00:00) moved; nothing of the other symbol
    assert Path("aggtrades", SYMBOLS[0], hour_dir, "data.parquet") in changed
    for tf in ("1m", "5m", "15m"):
        assert Path(f"features_{tf}", SYMBOLS[0], hour_dir, "data.parquet") in changed
    assert all(p.parts[1] == SYMBOLS[0] for p in changed), changed
    assert all(p.parts[0] in ("aggtrades", "features_1m", "features_5m", "features_15m") for p in changed)
    later = [p for p in changed if p.parts[0] == "aggtrades"]
    assert len(later) == 1
    day_end = (late_hour // 86_400_000 + 1) * 86_400_000
    for p in changed:  # nothing before the late trade's hour, nothing after its day
        h = hour_of(p)
        assert late_hour <= h.timestamp() * 1000 < day_end
    assert report.types["aggtrades"].written == 1 and report.types["aggtrades"].invalidated == 1
    assert db_hour(db_url, "aggtrades", SYMBOLS[0], late_hour).equals(
        pq.read_table(out / "aggtrades" / SYMBOLS[0] / hour_dir / "data.parquet")
    )


def test_sigkill_mid_export_leaves_nothing_partial_and_a_rerun_completes(db_url: str, tmp_path: Path) -> None:
    run(write_hours(db_url, hours=24, trades_per_hour=4000))
    out = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "microstructure",
        "--database-url",
        db_url,
        "export",
        "--output-dir",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(out.rglob("data.parquet"))) < 10:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for p in out.rglob("data.parquet"):  # whatever is there is whole and right
        t = pq.read_table(p)
        assert t.num_rows > 0
    assert main(["--database-url", db_url, "export", "--output-dir", str(out)]) == 0
    assert not list(out.rglob(".*.tmp-*"))
    complete = files(out)
    fresh = tmp_path / "fresh"
    export_once(db_url, fresh, types=list(DEFAULT_TYPES))
    assert {p.relative_to(out): p.read_bytes() for p in complete} == {
        p.relative_to(fresh): p.read_bytes() for p in files(fresh)
    }
    assert main(["--database-url", db_url, "export", "--output-dir", str(out)]) == 0
    assert files(out) == complete


def test_bad_input_is_one_line_and_exit_code_2(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(write_hours(db_url, hours=1, trades_per_hour=500))
    base = ["--database-url", db_url]
    cases = {
        "--type: no type 'trades'": ["export", "--output-dir", str(tmp_path / "a"), "--type", "trades"],
        "--symbol: no data for 'ZZZUSDT'": ["export", "--output-dir", str(tmp_path / "b"), "--symbol", "ZZZUSDT"],
        "--end: expected a time after --start": ["export", "--output-dir", str(tmp_path / "c"), "--start", "2026-03-02", "--end", "2026-03-01"],
        "--timeframes: expected one of 1m, 5m, 15m": ["features", "export", "--output-dir", str(tmp_path / "d"), "--timeframes", "1m,4h"],
        "--timeframe: expected one of": ["features", "pull", "--symbol", SYMBOLS[0], "--timeframe", "2m", "--start", "2026-03-01", "--end", "2026-03-02", "--out", str(tmp_path / "x.parquet")],
        "--compression: expected snappy or zstd": ["export", "--output-dir", str(tmp_path / "e"), "--compression", "lz4"],
    }  # fmt: skip
    cases["cannot write there"] = ["export", "--output-dir", "/proc/nope"]  # even root cannot
    for needle, argv in cases.items():
        assert main(base + argv) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    for name in "abcde":  # nothing half-written
        assert not list((tmp_path / name).rglob("data.parquet")) if (tmp_path / name).exists() else True


def test_types_exported_by_default_cover_the_brief(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(DEFAULT_TYPES) == set(TYPES) == {
        "aggtrades", "book_depth", "mark_price", "funding", "open_interest", "liquidations",
        "book_depth_bands", "metrics", "klines", "features_1m", "features_5m", "features_15m",
    }  # fmt: skip
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "(default: every type)" in capsys.readouterr().out
    assert np.all(
        [TYPES[t].sql().rstrip().splitlines()[-1].startswith("ORDER BY") for t in TYPES]
    )  # rows in order


def test_follow_exports_hours_picks_up_late_writes_and_survives_a_restart(
    db_url: str, tmp_path: Path
) -> None:
    state = run(write_hours(db_url, hold_back=4_000))
    late = state["held"]
    late_hour = int(late.column("ts_ms")[0].as_py()) // HOUR_MS * HOUR_MS
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "microstructure", "--database-url", db_url, "export", "--output-dir", str(out),
           "--type", "aggtrades,features_1m", "--follow", "--poll", "1"]  # fmt: skip

    def wait_for(cond, what: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds
        while not cond():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(files(out)) == 4 * 6, "every hour of both types and symbols exported", proc)
        day = at(late_hour)
        target = (
            out
            / "aggtrades"
            / SYMBOLS[0]
            / f"{day:%Y}"
            / f"{day:%m}"
            / f"{day:%d}"
            / f"hour={day:%H}"
            / "data.parquet"
        )
        before = files(out)
        run(write_late(db_url, SYMBOLS[0], late))
        wait_for(lambda: files(out)[target] != before[target], "the late hour re-exported", proc)
        assert pq.read_table(target).num_rows == db_hour(db_url, "aggtrades", SYMBOLS[0], late_hour).num_rows
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out_text, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and time.monotonic() - t < 15, err
    finally:
        if proc.poll() is None:
            proc.kill()
    settled = files(out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # a few polls after a restart: nothing to do
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert files(out) == settled


def test_an_hour_with_bars_not_yet_final_is_exported_again_once_they_are(db_url: str, tmp_path: Path) -> None:
    """The last bars of the data are not final (no stream ran past them); they become final when
    later rows arrive, which land in the next hour: the earlier hour's file is rewritten anyway."""
    import asyncpg
    from ex_helpers import trade_table
    from fx_cases import marks, snapshots

    from microstructure.export.partitions import Manifest, day_dir
    from microstructure.features_sql.refresher import refresh_pending
    from microstructure.ingest.collectors.book_values import BookValues
    from microstructure.ingest.sink.writer import write_batch

    hours, per_hour, sym = 2, 600, SYMBOLS[0]
    run(write_hours(db_url, hours=hours, trades_per_hour=per_hour))
    out = tmp_path / "data"
    export_once(db_url, out, types=["features_1m"])
    last_hour = at(T0 + (hours - 1) * HOUR_MS)
    path = out / "features_1m" / sym / f"{last_hour:%Y/%m/%d}" / f"hour={last_hour:%H}" / "data.parquet"
    manifest = lambda: Manifest.load(day_dir(out, "features_1m", sym, last_hour)).hours[f"{last_hour:%H}"]  # noqa: E731
    first_final = pq.read_table(path).column("final").to_pylist()
    assert not first_final[-1] and manifest()["nonfinal"] == first_final.count(False) > 0

    async def go_on() -> None:  # every stream of the symbol runs on for 30 minutes after the data's end
        conn = await asyncpg.connect(db_url)
        try:
            end, rng = T0 + hours * HOUR_MS, np.random.default_rng(5)
            ids = np.arange(hours * per_hour + 1, hours * per_hour + 301, dtype=np.int64)
            ts = np.sort(end + rng.integers(0, 30 * 60_000, len(ids)))
            await write_batch(conn, "agg_trades", sym, trade_table(rng, ids, ts, 100.0))
            rows = []
            for j, t in enumerate(range(end, end + 30 * 60_000, 5000)):
                bids = [[round(99.95 - 0.1 * i, 2), 5.0] for i in range(20)]
                asks = [[round(100.05 + 0.1 * i, 2), 5.0] for i in range(20)]
                rows.append((t + 7, 10**6 + 10 * j, bids, asks))
            await write_batch(conn, "book_snapshots", sym, snapshots(rows, BookValues(), sym))
            await write_batch(
                conn,
                "mark_prices",
                sym,
                marks([(t, 100.0, 100.0, 0.0001) for t in range(end, end + 30 * 60_000, 2000)]),
            )
            await refresh_pending(conn)
        finally:
            await conn.close()

    run(go_on())
    export_once(db_url, out, types=["features_1m"])
    again = pq.read_table(path)
    assert again.column("final").to_pylist() == [True] * again.num_rows and manifest()["nonfinal"] == 0
    assert again.equals(db_hour(db_url, "features_1m", sym, int(last_hour.timestamp() * 1000)))
