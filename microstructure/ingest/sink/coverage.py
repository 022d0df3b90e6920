"""Coverage of aggregate-trade ids per symbol and UTC day, and the missing id ranges (gaps).

Aggregate ids are consecutive per symbol: any id not stored between two stored ids is lost data.
After each merged batch, in the batch's transaction: the coverage rows of the days it touched are
updated, and the id range from the stored id below the batch to the stored id above it is scanned
for holes, which become open gaps; open gaps in that range that the scan no longer finds are
marked filled (a partly filled gap keeps its remaining part open).
"""

from __future__ import annotations

from datetime import date
from functools import cache
from importlib import resources

import asyncpg
import numpy as np

DAY_MS = 86_400_000


@cache
def sql(name: str) -> str:
    return resources.files("microstructure.ingest.sink").joinpath("sql", f"{name}.sql").read_text()


async def add_batch(
    conn: asyncpg.Connection, symbol: str, ids: np.ndarray, ts_ms: np.ndarray, inserted_by_day: dict[int, int]
) -> None:
    """Update coverage and gaps for a batch just merged (call inside its transaction)."""
    if len(ids) == 0:
        return
    days = ts_ms // DAY_MS
    order = np.argsort(days, kind="stable")
    days_sorted, ids_sorted = days[order], ids[order]
    uniq, starts = np.unique(days_sorted, return_index=True)
    firsts = np.minimum.reduceat(ids_sorted, starts)
    lasts = np.maximum.reduceat(ids_sorted, starts)
    await conn.execute(
        sql("coverage_add"),
        symbol,
        [date.fromordinal(date(1970, 1, 1).toordinal() + int(d)) for d in uniq],
        firsts.tolist(),
        lasts.tolist(),
        [int(inserted_by_day.get(int(d), 0)) for d in uniq],
    )
    await rescan_gaps(conn, symbol, int(ids.min()), int(ids.max()))


async def rescan_gaps(conn: asyncpg.Connection, symbol: str, lo_id: int, hi_id: int) -> list[tuple[int, int]]:
    lo, hi = await conn.fetchrow(sql("gaps_bounds"), symbol, lo_id, hi_id)
    found = [(r["from_id"], r["to_id"]) for r in await conn.fetch(sql("gaps_scan"), symbol, lo, hi)]
    if found:
        await conn.execute(sql("gaps_upsert"), symbol, [f for f, _ in found], [t for _, t in found])
    await conn.execute(sql("gaps_close"), symbol, lo, hi, [f for f, _ in found])
    return found


async def record_gaps(
    conn: asyncpg.Connection, symbol: str, from_ids: list[int], to_ids: list[int], note: str = "live"
) -> None:
    """Record detected gaps as open (call inside a transaction); ranges already stored are skipped."""
    await conn.execute(sql("gaps_record"), symbol, from_ids, to_ids, note)


async def open_gaps_live(
    conn: asyncpg.Connection, symbols: list[str]
) -> list[tuple[str, int, int, int | None]]:
    """(symbol, from_id, to_id, trade time in ms of the stored id below) of every open gap of `symbols`."""
    return [
        (r["symbol"], r["from_id"], r["to_id"], r["before_ms"])
        for r in await conn.fetch(sql("gaps_open_live"), symbols)
    ]


async def recompute_coverage(
    conn: asyncpg.Connection, symbol: str, day: date
) -> tuple[int, int, int, int] | None:
    """Coverage of one day from the stored rows: (first_id, last_id, row_count, missing_count)."""
    row = await conn.fetchrow(sql("coverage_recompute"), symbol, day)
    return None if row is None else (row[0], row[1], row[2], row[3])


async def open_gaps(conn: asyncpg.Connection, symbol: str) -> list[tuple[int, int]]:
    return [(r["from_id"], r["to_id"]) for r in await conn.fetch(sql("gaps_open"), symbol)]
