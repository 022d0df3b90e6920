"""The aggtrades export pipeline (reads on several connections, ties in trade time ordered on the
client, Arrow's in-memory Parquet sink): its files hold exactly the bytes of the rows in (timestamp,
trade_id) order built independently from SQL, and are the same whatever the number of readers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ex_helpers import run, trade_table

from microstructure.export.exporter import _with_symbol, export_once, order_ties
from microstructure.export.partitions import parquet_bytes
from microstructure.ingest.sink.writer import write_batch

DAY_MS = 86_400_000
D0 = int(datetime(2026, 2, 10, tzinfo=UTC).timestamp() * 1000)
SYM = "TIEUSDT"


async def write_days(dsn: str, days: int, per_day: int) -> None:
    """Trades over `days` days; many share a millisecond, and inside some of those ties the ids run
    backwards (the rows are written in id order, so the time index holds them against id order)."""
    rng = np.random.default_rng(5)
    conn = await asyncpg.connect(dsn)
    try:
        n = days * per_day
        ids = np.arange(1, n + 1, dtype=np.int64)
        ts = np.sort(D0 + rng.integers(0, days * DAY_MS // 50, n) * 50)  # 50 ms grid: many ties
        flip = rng.random(n) < 0.3  # a trade that takes its neighbour's time, later id first
        ts2 = ts.copy()
        ts2[1:][flip[1:]] = ts[:-1][flip[1:]]
        order = np.lexsort((-ids, ts2))  # ids descending inside a tie
        table = trade_table(rng, ids, ts2, 50.0)
        await write_batch(conn, "agg_trades", SYM, table.take(pa.array(order)))
    finally:
        await conn.close()


def expected_hour(dsn: str, hour: datetime, schema: pa.Schema) -> pa.Table:
    """The hour's rows straight from SQL in (ts, agg_id) order, as the file's schema holds them."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT (extract(epoch FROM ts) * 1000)::bigint, agg_id, price, quantity, is_buyer_maker, "
            "first_trade_id, last_trade_id FROM agg_trades WHERE symbol = %s AND ts >= %s "
            "AND ts < %s + interval '1 hour' ORDER BY ts, agg_id",
            (SYM, hour, hour),
        ).fetchall()
    cols = list(zip(*rows, strict=True))
    names = [
        "timestamp",
        "trade_id",
        "price",
        "quantity",
        "is_buyer_maker",
        "first_trade_id",
        "last_trade_id",
    ]
    data = {k: list(v) for k, v in zip(names, cols, strict=True)} | {"symbol": [SYM] * len(rows)}
    return pa.Table.from_pydict(data, schema=schema)


def hour_files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted((root / "aggtrades").rglob("data.parquet"))}


def test_files_equal_the_sql_order_and_any_number_of_readers(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(write_days(db_url, days=3, per_day=6000))
    out: dict[int, dict[Path, bytes]] = {}
    for readers in (1, 3):
        monkeypatch.setenv("MICROSTRUCTURE_EXPORT_READERS", str(readers))
        root = tmp_path / f"r{readers}"
        rep = export_once(db_url, root, types=["aggtrades"], refresh_features=False)
        out[readers] = hour_files(root)
        assert rep.types["aggtrades"].written == len(out[readers]) == 72
        # a second run over the same range writes nothing, every byte and mtime kept
        mtimes = {p: (root / p).stat().st_mtime_ns for p in out[readers]}
        again = export_once(
            db_url, root, types=["aggtrades"], refresh_features=False,
            start=datetime.fromtimestamp(D0 / 1000, UTC), end=datetime.fromtimestamp((D0 + 3 * DAY_MS) / 1000, UTC),
        )  # fmt: skip
        assert again.types["aggtrades"].written == 0 and again.types["aggtrades"].unchanged == 72
        assert {p: (root / p).stat().st_mtime_ns for p in out[readers]} == mtimes
    assert out[1] == out[3]
    root = tmp_path / "r1"
    ties_reversed = 0
    for rel, data in out[1].items():
        f = root / rel
        schema = pq.read_schema(f)
        hour = datetime.strptime("/".join(rel.parts[2:5]) + rel.parts[5][5:], "%Y/%m/%d%H").replace(
            tzinfo=UTC
        )
        want = expected_hour(db_url, hour, schema)
        assert pq.read_table(f).equals(want), rel
        assert hashlib.sha256(parquet_bytes(want, "snappy")).digest() == hashlib.sha256(data).digest(), rel
        ts = want.column("timestamp").to_numpy()
        ties_reversed += int(np.sum(ts[1:] == ts[:-1]))
    assert ties_reversed > 1000  # the ties were there to be ordered


def test_order_ties_sorts_only_what_is_out_of_order() -> None:
    t = pa.table({"timestamp": [1, 1, 1, 2, 3, 3], "trade_id": [7, 5, 6, 1, 9, 8]})
    assert order_ties(t).column("trade_id").to_pylist() == [5, 6, 7, 1, 8, 9]
    ok = pa.table({"timestamp": [1, 1, 2], "trade_id": [1, 2, 0]})
    assert order_ties(ok) is ok


def test_symbol_column_from_buffers_equals_a_list() -> None:
    t = pa.table({"timestamp": pa.array(np.arange(5, dtype=np.int64))})
    got = _with_symbol(t, "BTCUSDT")
    assert got.column("symbol").to_pylist() == ["BTCUSDT"] * 5
    assert got.schema.field("symbol") == pa.field("symbol", pa.string(), nullable=False)
    assert _with_symbol(t.slice(0, 0), "X").num_rows == 0
