"""One stored day of aggregate trades reconciled with its archive, set-based in SQL.

The archive's rows are COPYed into a temporary table and one diff query (sql/reconcile_diff.sql)
compares them by id with the stored rows of the day (and with any stored row whose id is in the
archive's id range, whatever its time). Then, in the same transaction and under the symbol's lock:

- missing: archive ids the store lacks are inserted;
- differs: a stored row whose time, price, quantity, first/last trade id or maker flag differ is
  replaced by the archive's version (the stored version is kept in `archive_displaced`);
- extra: a stored row of the day whose id the archive does not hold is moved to
  `archive_displaced` (reason 'not_in_archive'): the archive is the exchange's record of the day, so
  it is not kept as truth in agg_trades, but it is kept, and reported;
- coverage of the touched days is recomputed from the rows, open gaps the archive filled are split
  as the writer does, gaps the archive does not fill either (ids absent from Binance's own record)
  are marked 'unfillable', and the day is marked verified with the archive's sha256
  (agg_trade_coverage.verified_sha256, archive_verified);
- the changed time range goes into the invalidation log (the writer's SQL), so the feature refresher
  and the Parquet export redo those hours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc

from microstructure.ingest.sink import coverage, invalidations
from microstructure.ingest.sink.coverage import sql
from microstructure.ingest.sink.partitions import DayPartitions
from microstructure.ingest.sink.pgcopy import ColumnSpec, copy_binary, encode_copy_binary

STAGE = "reconcile_archive"
STAGE_COLUMNS = [
    ColumnSpec("agg_id", "bigint"),
    ColumnSpec("ts_ms", "timestamptz"),
    ColumnSpec("price", "double precision"),
    ColumnSpec("quantity", "double precision"),
    ColumnSpec("first_trade_id", "bigint"),
    ColumnSpec("last_trade_id", "bigint"),
    ColumnSpec("is_buyer_maker", "boolean"),
]
STAGE_DB_COLUMNS = ["agg_id", "ts", "price", "quantity", "first_trade_id", "last_trade_id", "is_buyer_maker"]
MAX_LISTED = 1000  # differences and extra ids listed in a report and an event, per day


@dataclass
class Difference:
    """One stored row the archive has another version of."""

    agg_id: int
    fields: list[str]
    stored: dict[str, Any]
    archive: dict[str, Any]

    def line(self) -> str:
        parts = [f"{f} {self.stored[f]!r} -> {self.archive[f]!r}" for f in self.fields]
        return f"id {self.agg_id}: " + ", ".join(parts)


@dataclass
class DayResult:
    """What reconciling one day found and changed."""

    symbol: str
    day: date
    sha256: str
    archive_rows: int = 0
    missing: int = 0
    differing: int = 0
    extra: int = 0
    differences: list[Difference] = field(default_factory=list)  # at most MAX_LISTED
    extra_ids: list[int] = field(default_factory=list)  # at most MAX_LISTED
    unfillable: int = 0  # open gaps the archive does not fill either
    changed_ms: tuple[int, int] | None = None  # time range logged for the features

    @property
    def changed(self) -> bool:
        return bool(self.missing or self.differing or self.extra)

    def detail(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "sha256": self.sha256,
            "archive_rows": self.archive_rows,
            "missing": self.missing,
            "differing": self.differing,
            "extra": self.extra,
            "unfillable_gaps": self.unfillable,
            "differences": [
                {"agg_id": d.agg_id, "fields": d.fields, "stored": d.stored, "archive": d.archive}
                for d in self.differences[:100]
            ],
            "extra_ids": self.extra_ids[:100],
        }


def day_bounds(d: date) -> tuple[datetime, datetime]:
    t0 = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return t0, t0 + timedelta(days=1)


_FIELD_COLUMNS = {
    "time": ("s_ts_ms", "a_ts_ms"),
    "price": ("s_price", "a_price"),
    "quantity": ("s_quantity", "a_quantity"),
    "first_trade_id": ("s_first", "a_first"),
    "last_trade_id": ("s_last", "a_last"),
    "is_buyer_maker": ("s_maker", "a_maker"),
}


async def reconcile_agg_day(
    conn: asyncpg.Connection,
    symbol: str,
    day: date,
    archive: pa.Table,
    sha256: str,
    *,
    partitions: DayPartitions | None = None,
) -> DayResult:
    """Reconcile symbol's stored `day` with `archive` (an AGG_TRADES table: the parsed archive,
    sorted and without duplicate ids) in one transaction; see the module doc."""
    result = DayResult(symbol, day, sha256, archive_rows=archive.num_rows)
    t0, t1 = day_bounds(day)
    payload = encode_copy_binary(archive, STAGE_COLUMNS)
    if archive.num_rows:
        times = archive.column("ts_ms")
        lo_ms, hi_ms = int(pc.min(times).as_py()), int(pc.max(times).as_py())
        await (partitions or DayPartitions()).ensure(conn, "agg_trades", lo_ms, hi_ms)
    async with conn.transaction():
        await coverage.lock_symbol(conn, symbol)
        await conn.execute(sql("reconcile_stage"))
        if archive.num_rows:
            await copy_binary(conn, STAGE, payload, STAGE_DB_COLUMNS)
        await conn.execute(sql("reconcile_diff"), symbol, t0, t1)
        counts = await conn.fetchrow(sql("reconcile_counts"))
        result.missing, result.differing, result.extra = (
            int(counts["missing"]),
            int(counts["differing"]),
            int(counts["extra"]),
        )
        if result.changed:
            for r in await conn.fetch(sql("reconcile_differences"), MAX_LISTED):
                result.differences.append(
                    Difference(
                        int(r["agg_id"]),
                        list(r["fields"]),
                        {f: r[s] for f, (s, _) in _FIELD_COLUMNS.items()},
                        {f: r[a] for f, (_, a) in _FIELD_COLUMNS.items()},
                    )
                )
            result.extra_ids = [
                int(r["agg_id"]) for r in await conn.fetch(sql("reconcile_extras"), MAX_LISTED)
            ]
            touched = [r["day"] for r in await conn.fetch(sql("reconcile_days_touched"))]
            await conn.execute(sql("reconcile_displace"), symbol, sha256)
            await conn.execute(sql("reconcile_delete"), symbol)
            await conn.execute(sql("reconcile_insert"), symbol)
            for d in sorted({*touched, day}):
                await coverage.recompute_coverage(conn, symbol, d)
            result.changed_ms = (int(counts["lo_ms"]), int(counts["hi_ms"]))
            await invalidations.log_range(conn, "agg_trades", symbol, *result.changed_ms)
        if archive.num_rows:
            ids = archive.column("agg_id")
            lo_id, hi_id = int(ids[0].as_py()), int(ids[-1].as_py())
            await coverage.resolve_gaps(conn, symbol, lo_id, hi_id)
            status = await conn.execute(sql("reconcile_unfillable"), symbol, lo_id, hi_id, sha256[:12])
            result.unfillable = int(status.split()[-1])
        await conn.execute(sql("reconcile_verified"), symbol, day, sha256)
        await conn.execute(
            sql("archive_verified_upsert"),
            "aggTrades",
            symbol,
            day,
            sha256,
            result.missing,
            result.differing,
            result.extra,
        )
        await conn.execute(
            sql("reconcile_event"), symbol, "reconciled", json.dumps(result.detail(), default=str)
        )
    return result


async def verified_days(
    conn: asyncpg.Connection, dataset: str, symbol: str, start: date, end: date
) -> dict[date, str]:
    """{day: sha256 of the archive it was last reconciled with} for dataset and symbol in [start, end]."""
    return {
        r["day"]: r["sha256"]
        for r in await conn.fetch(sql("archive_verified_get"), dataset, symbol, start, end)
    }


async def record_event(
    conn: asyncpg.Connection, symbol: str | None, kind: str, detail: dict[str, Any]
) -> None:
    await conn.execute(sql("reconcile_event"), symbol, kind, json.dumps(detail, default=str))


# ---------------------------------------------------------------- archive-only tables: the archive is the record

ARCHIVE_TABLES = {"bookDepth": "book_depth_bands", "metrics": "futures_metrics"}


async def reload_archive_day(
    conn: asyncpg.Connection,
    dataset: str,
    symbol: str,
    day: date,
    rows: pa.Table,
    types: dict[str, str],
    sha256: str,
) -> tuple[int, int]:
    """Replace symbol's stored rows of `day` in the archive-only table of `dataset` (bookDepth ->
    book_depth_bands, metrics -> futures_metrics) by the archive's `rows` (the table's columns, as
    writer.merge_table takes them), in one transaction; record the day verified with `sha256` and
    log the day for the features. Returns (rows deleted, rows inserted)."""
    from microstructure.ingest.sink.writer import merge_table

    table = ARCHIVE_TABLES[dataset]
    t0, t1 = day_bounds(day)
    async with conn.transaction():
        status = await conn.execute(sql(f"archive_day_delete_{dataset}"), symbol, t0, t1)
        deleted = int(status.split()[-1])
        inserted = await merge_table(conn, table, rows, types)
        lo_ms = int(t0.timestamp() * 1000)
        await invalidations.log_range(conn, table, symbol, lo_ms, lo_ms + coverage.DAY_MS - 1)
        await conn.execute(sql("archive_verified_upsert"), dataset, symbol, day, sha256, inserted, 0, 0)
        await conn.execute(
            sql("reconcile_event"),
            symbol,
            "archive_reloaded",
            json.dumps({"dataset": dataset, "day": day.isoformat(), "sha256": sha256, "deleted": deleted,
                        "inserted": inserted}),
        )  # fmt: skip
    return deleted, inserted
