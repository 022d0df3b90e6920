"""Feature tests' helpers: read the raw tables and the feature views into pandas, compare them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import psycopg
from reference import BOOL_COLS, COLUMNS, INT_COLS, Raw

RAW_QUERIES = {
    "agg_trades": "SELECT symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, is_buyer_maker FROM agg_trades",
    "book_snapshots": "SELECT symbol, ts, last_update_id, bid_px, bid_qty, ask_px, ask_qty FROM book_snapshots",
    "mark_prices": "SELECT symbol, ts, mark_price, index_price, funding_rate FROM mark_prices",
    "funding_rates": "SELECT symbol, funding_ts, funding_rate FROM funding_rates",
    "open_interest": "SELECT symbol, ts, open_interest FROM open_interest",
    "liquidations": "SELECT symbol, ts, side, quantity FROM liquidations",
    "agg_trade_gaps": "SELECT symbol, from_id, to_id, status FROM agg_trade_gaps",
    "ingest_events": "SELECT ts, symbol, kind, detail FROM ingest_events",
    "price_klines": "SELECT symbol, kind, ts, close FROM price_klines",
    "book_depth_bands": "SELECT symbol, ts, percentage::float8 AS percentage, depth, notional FROM book_depth_bands",
}


def _frame(cur: psycopg.Cursor[Any], sql: str) -> pd.DataFrame:
    cur.execute(sql)
    cols = [d.name for d in cur.description or []]
    return pd.DataFrame(cur.fetchall(), columns=cols)


def load_raw(dsn: str) -> Raw:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        frames = {name: _frame(cur, sql) for name, sql in RAW_QUERIES.items()}
        settings = _frame(cur, "SELECT symbol, large_trade_notional FROM symbol_settings")
    for name in ("mark_prices",):
        for c in ("index_price", "funding_rate"):
            frames[name][c] = pd.to_numeric(frames[name][c], errors="coerce")
    return Raw(
        **frames, large_notional=dict(zip(settings["symbol"], settings["large_trade_notional"], strict=True))
    )


def column_types(dsn: str, tf: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            (f"features_{tf}",),
        ).fetchall()
    return dict(rows)


def assert_column_types(dsn: str, tf: str) -> None:
    """FEATURES.md: counts are integers, everything else double precision, buckets timestamptz."""
    want = {"symbol": "text", "bucket": "timestamp with time zone", "bucket_end": "timestamp with time zone"}
    for c in COLUMNS[1:]:
        want[c] = "bigint" if c in INT_COLS else "boolean" if c in BOOL_COLS else "double precision"
    assert column_types(dsn, tf) == want


def read_features(dsn: str, tf: str, symbols: Sequence[str] | None = None) -> pd.DataFrame:
    sql = f"SELECT * FROM features_{tf}"
    params: tuple[Any, ...] = ()
    if symbols is not None:
        sql += " WHERE symbol = ANY(%s)"
        params = (list(symbols),)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql + " ORDER BY symbol, bucket", params)
        cols = [d.name for d in cur.description or []]
        df = pd.DataFrame(cur.fetchall(), columns=cols)
    df["bucket"] = pd.to_datetime(df["bucket"], utc=True)
    df["bucket_end"] = pd.to_datetime(df["bucket_end"], utc=True)
    return df.set_index(["symbol", "bucket"])


def assert_frames_match(
    got: pd.DataFrame, want: pd.DataFrame, *, rtol: float = 1e-9, label: str = ""
) -> None:
    """Same bars; every column equal (relative `rtol`), NULLs in the same places; counts integral."""
    assert list(got.columns) == COLUMNS, f"{label}: columns {list(got.columns)}"
    missing = want.index.difference(got.index)
    extra = got.index.difference(want.index)
    assert not len(missing) and not len(extra), (
        f"{label}: bars missing {list(missing[:5])} extra {list(extra[:5])}"
    )
    got = got.loc[want.index]
    assert (got["bucket_end"] == want["bucket_end"]).all(), label
    problems = []
    for col in COLUMNS[1:]:
        a = pd.to_numeric(got[col], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(want[col], errors="coerce").to_numpy(dtype=float)
        na, nb = np.isnan(a), np.isnan(b)
        if not np.array_equal(na, nb):
            i = int(np.flatnonzero(na != nb)[0])
            problems.append(f"{col}: NULL mismatch at {want.index[i]} (db {a[i]}, ref {b[i]})")
            continue
        atol = _atol(col, want)
        atol = atol[~na] if isinstance(atol, np.ndarray) else atol
        ok = np.isclose(a[~na], b[~nb], rtol=rtol, atol=atol)
        if not ok.all():
            i = int(np.flatnonzero(~na)[np.flatnonzero(~ok)[0]])
            problems.append(f"{col}: {want.index[i]} db {a[i]!r} != ref {b[i]!r}")
    assert not problems, f"{label}: " + "; ".join(problems[:8])


def _atol(col: str, want: pd.DataFrame) -> np.ndarray | float:
    """Absolute slack, per bar, where a value is a difference of nearly equal doubles summed in
    another order (a bar whose buys and sells balance, a funding rate that did not move): 1e-9 of
    the size of what was subtracted. Everything else is compared relatively only."""
    num = lambda c: pd.to_numeric(want[c], errors="coerce").abs().to_numpy(dtype=float)  # noqa: E731
    if col == "volume_delta":
        scale = num("volume")
    elif col == "cvd":  # the day's volume up to the bar
        vol = pd.to_numeric(want["volume"], errors="coerce").fillna(0.0)
        day = want.index.get_level_values("bucket").floor("D")
        scale = vol.groupby([want.index.get_level_values("symbol"), day]).cumsum().to_numpy(dtype=float)
    elif col == "funding_delta":
        scale = num("funding_rate")
    elif col == "oi_change_pct":
        scale = np.full(len(want), 100.0)
    elif col == "ofi":  # a sum of +-quantity terms
        scale = np.full(
            len(want), np.nanmax(num("ofi")) if len(want) and np.isfinite(num("ofi")).any() else 0.0
        )
    elif col.startswith(("depth_imbalance_", "notional_imbalance_")):  # a difference over a sum: in [-1, 1]
        scale = np.ones(len(want))
    elif col == "spread_std":  # noise of about 1e-12 of the spread when spreads differ only by rounding
        scale = num("spread_avg")
    else:
        return 0.0
    return np.nan_to_num(scale, nan=0.0) * 1e-9


async def call_with_conn(dsn: str, fn: Any, **kw: Any) -> Any:
    """`await fn(conn, **kw)` on a connection of its own (closed after)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await fn(conn, **kw)
    finally:
        await conn.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# Raw tables with their columns, for copying rows into PGlite (which has no COPY) with INSERT.
COPY_TABLES: dict[str, list[tuple[str, str]]] = {
    "symbol_settings": [("symbol", "text"), ("large_trade_notional", "float8")],
    "agg_trades": [("symbol", "text"), ("agg_id", "int8"), ("ts", "timestamptz"), ("price", "float8"),
                   ("quantity", "float8"), ("first_trade_id", "int8"), ("last_trade_id", "int8"),
                   ("is_buyer_maker", "bool"), ("recv_ts", "timestamptz")],
    "mark_prices": [("symbol", "text"), ("ts", "timestamptz"), ("mark_price", "float8"), ("index_price", "float8"),
                    ("est_settle_price", "float8"), ("funding_rate", "float8"), ("next_funding_ts", "timestamptz"),
                    ("recv_ts", "timestamptz")],
    "funding_rates": [("symbol", "text"), ("funding_ts", "timestamptz"), ("funding_rate", "float8"),
                      ("mark_price", "float8"), ("funding_interval_hours", "int4")],
    "open_interest": [("symbol", "text"), ("ts", "timestamptz"), ("open_interest", "float8"),
                      ("open_interest_value", "float8"), ("source", "text"), ("recv_ts", "timestamptz")],
    "liquidations": [("symbol", "text"), ("ts", "timestamptz"), ("trade_ts", "timestamptz"), ("side", "text"),
                     ("order_type", "text"), ("time_in_force", "text"), ("quantity", "float8"), ("price", "float8"),
                     ("avg_price", "float8"), ("status", "text"), ("last_filled_qty", "float8"),
                     ("filled_qty", "float8"), ("recv_ts", "timestamptz")],
}  # fmt: skip
COPY_TABLES["price_klines"] = [
    ("symbol", "text"), ("kind", "text"), ("ts", "timestamptz"), ("open", "float8"), ("high", "float8"),
    ("low", "float8"), ("close", "float8"), ("close_ts", "timestamptz"),
]  # fmt: skip
COPY_TABLES["agg_trade_gaps"] = [
    ("symbol", "text"), ("from_id", "int8"), ("to_id", "int8"), ("status", "text"), ("note", "text"),
]  # fmt: skip
COPY_TABLES["ingest_events"] = [
    ("ts", "timestamptz"), ("collector", "text"), ("symbol", "text"), ("kind", "text"), ("detail", "jsonb"),
]  # fmt: skip
COPY_TABLES["agg_trade_coverage"] = [
    ("symbol", "text"), ("day", "date"), ("first_id", "int8"), ("last_id", "int8"), ("row_count", "int8"),
    ("missing_count", "int8"),
]  # fmt: skip
COPY_TABLES["book_snapshots"] = [
    ("symbol", "text"), ("ts", "timestamptz"), ("event_ts", "timestamptz"), ("first_update_id", "int8"),
    ("last_update_id", "int8"), ("prev_update_id", "int8"), ("source", "text"), ("bid_px", "float8[]"),
    ("bid_qty", "float8[]"), ("ask_px", "float8[]"), ("ask_qty", "float8[]"), ("mid", "float8"), ("spread", "float8"),
    ("spread_bps", "float8"), ("weighted_mid_diff_bps", "float8"), ("imbalance_5", "float8"),
    ("imbalance_10", "float8"), ("imbalance_20", "float8"), ("bid_slope", "float8"), ("ask_slope", "float8"),
    ("bid_vol_ratio_5_20", "float8"), ("ask_vol_ratio_5_20", "float8"), ("ofi", "float8"), ("recv_ts", "timestamptz"),
]  # fmt: skip
COPY_TABLES["book_depth_bands"] = [
    ("symbol", "text"), ("ts", "timestamptz"), ("percentage", "numeric"), ("depth", "float8"), ("notional", "float8"),
]  # fmt: skip
# pglite-socket 0.0.19 breaks on a protocol message split over TCP reads: keep each statement small.
MAX_STATEMENT_BYTES = 24_000


def _literal(v: Any) -> Any:
    if isinstance(v, list):  # an array column goes as its text form inside a text[] parameter
        return "{" + ",".join(repr(float(x)) for x in v) + "}"
    return v


def copy_raw_rows(src: str, dst: str) -> dict[str, int]:
    """Every raw row of `src` inserted into `dst` with plain INSERTs (unnest of column arrays, in
    statements of a few kB): how the PGlite tests load what the collectors stored elsewhere."""
    counts: dict[str, int] = {}
    with psycopg.connect(src) as s, psycopg.connect(dst) as d:
        for table, cols in COPY_TABLES.items():
            names = ", ".join(c for c, _ in cols)
            select = ", ".join(f"{c}::text" if t == "jsonb" else c for c, t in cols)
            rows = s.execute(f"SELECT {select} FROM {table}").fetchall()
            counts[table] = len(rows)
            params = ", ".join(
                f"unnest(%s::text[])::{t}" if t.endswith("[]") else f"unnest(%s::{t}[])" for _, t in cols
            )
            sql = f"INSERT INTO {table} ({names}) SELECT {params} ON CONFLICT DO NOTHING"
            part: list[tuple[Any, ...]] = []
            size = 0
            for row in [*rows, None]:
                if row is not None:
                    row = tuple(_literal(v) for v in row)
                    part.append(row)
                    size += sum(len(str(v)) + 4 for v in row)
                if part and (row is None or size > MAX_STATEMENT_BYTES):
                    d.execute(sql, [list(c) for c in zip(*part, strict=True)])
                    part, size = [], 0
            d.commit()
    return counts
