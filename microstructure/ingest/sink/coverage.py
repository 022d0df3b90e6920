"""Coverage of aggregate-trade ids per symbol and UTC day, and the missing id ranges (gaps).

Aggregate ids are consecutive per symbol: any id not stored between two stored ids is lost data.
After each merged batch, in the batch's transaction (under the symbol's lock):

- coverage: the rows of the days the batch touched are updated;
- gaps the batch wrote into: each open gap overlapping the batch's id range is split into what is
  stored now (a 'filled' row) and what is still missing (an 'open' row), both keeping the time the
  gap was detected; so filled rows count ids that were missing and came later, open rows the ids
  missing now, and no id is in two rows;
- new gaps: missing ranges are recorded as open when this batch shows them. A batch from a primary
  source (the stream, an archive, REST pages) shows the holes from the stored id below it to the
  stored id above it. A gap fill (the rows of a REST page that lie in gaps a collector knows of and
  recorded before fetching) shows none: the page was contiguous, so every id between its rows that
  it did not keep is stored or still on its way (a websocket batch not yet committed), and ids in
  flight are not missing.
  Only ids really absent from the store when a batch commits, as far as its source can tell, are
  recorded: when a fill commits before the stream's batch around it, nothing was ever missing from
  the store and no gap is recorded at all.
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


async def lock_symbol(conn: asyncpg.Connection, symbol: str) -> None:
    """Serialise the writers of one symbol's aggregate trades until the transaction ends: the gap
    bookkeeping reads what the others write."""
    await conn.execute(sql("agg_trades_lock_symbol"), symbol)


async def add_batch(
    conn: asyncpg.Connection,
    symbol: str,
    ids: np.ndarray,
    ts_ms: np.ndarray,
    inserted_by_day: dict[int, int],
    *,
    gap_fill: bool = False,
) -> None:
    """Update coverage and gaps for a batch just merged (call inside its transaction); `gap_fill`:
    the batch was fetched for ids known to be missing (see the module doc)."""
    if len(ids) == 0:
        return
    days = ts_ms // DAY_MS
    if len(days) > 1 and not bool(np.all(days[1:] >= days[:-1])):
        order = np.argsort(days, kind="stable")
        days, ids = days[order], ids[order]
    # days in order (an archive, a stream batch: already so, without a sort): where each day starts
    starts = np.concatenate(([0], np.flatnonzero(days[1:] != days[:-1]) + 1))
    uniq, ids_sorted = days[starts], ids
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
    lo_id, hi_id = int(ids.min()), int(ids.max())
    await resolve_gaps(conn, symbol, lo_id, hi_id)
    if not gap_fill:
        await scan_gaps(conn, symbol, lo_id, hi_id, complete=_every_id(ids, lo_id, hi_id))


def _every_id(ids: np.ndarray, lo_id: int, hi_id: int) -> bool:
    """Does the batch hold every id of [lo_id, hi_id]? (an archive day, a REST page: then nothing
    inside its range can be missing once it is stored)"""
    span = hi_id - lo_id + 1
    if len(ids) < span:
        return False
    if len(ids) == span and bool(np.all(np.diff(ids) == 1)):
        return True  # sorted and consecutive: the usual case, without a sort
    return int(np.unique(ids).size) == span


async def resolve_gaps(conn: asyncpg.Connection, symbol: str, lo_id: int, hi_id: int) -> None:
    """Split every open gap overlapping [lo_id, hi_id] into its stored ('filled') and still missing
    ('open') parts."""
    for gap in await conn.fetch(sql("gaps_touched"), symbol, lo_id, hi_id):
        f, t = int(gap["from_id"]), int(gap["to_id"])
        runs = [
            (int(r["from_id"]), int(r["to_id"])) for r in await conn.fetch(sql("gaps_runs"), symbol, f, t)
        ]
        if not runs:
            continue  # the batch spans the gap without any of its ids: still missing as it was
        holes: list[tuple[int, int]] = []
        at = f
        for a, b in runs:
            if a > at:
                holes.append((at, a - 1))
            at = b + 1
        if at <= t:
            holes.append((at, t))
        await conn.execute(sql("gaps_delete"), symbol, f)
        await conn.execute(
            sql("gaps_split"),
            symbol,
            [a for a, _ in runs],
            [b for _, b in runs],
            [a for a, _ in holes],
            [b for _, b in holes],
            gap["detected_at"],
            gap["note"],
        )


async def scan_gaps(
    conn: asyncpg.Connection,
    symbol: str,
    lo_id: int,
    hi_id: int,
    *,
    complete: bool = False,
) -> list[tuple[int, int]]:
    """Record as open the missing ranges among the stored ids of [lo_id, hi_id], widened to the
    stored ids just below and above it. Returns the ranges found. `complete`: the batch just stored
    held every id of [lo_id, hi_id], so only the edges to its neighbours are read (not the whole
    range: a day is 2.5 M ids)."""
    lo, hi = await conn.fetchrow(sql("gaps_bounds"), symbol, lo_id, hi_id)
    spans = [(lo, lo_id), (hi_id, hi)] if complete else [(lo, hi)]
    found = [
        (r["from_id"], r["to_id"])
        for a, b in spans
        if b > a
        for r in await conn.fetch(sql("gaps_scan"), symbol, a, b)
    ]
    if found:
        await conn.execute(sql("gaps_upsert"), symbol, [f for f, _ in found], [t for _, t in found])
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


# -- every symbol of a flush at once -----------------------------------------------------------
# The writer's flush holds the rows of many symbols; these do for all of them, in a fixed number of
# statements whatever the symbol count, what the functions above do for one.


def _dates(days: np.ndarray) -> list[date]:
    epoch = date(1970, 1, 1).toordinal()
    return [date.fromordinal(epoch + int(d)) for d in days.tolist()]


async def lock_symbols(conn: asyncpg.Connection, symbols: list[str]) -> None:
    """lock_symbol for every symbol of `symbols`, in name order (no two flushes deadlock)."""
    await conn.execute(sql("agg_trades_lock_symbols"), symbols)


async def ranges_taken(conn: asyncpg.Connection, symbols: list[str], lo: np.ndarray, hi: np.ndarray) -> bool:
    """Is any id of [lo[i], hi[i]] stored for symbols[i], for any i?"""
    return bool(await conn.fetchval(sql("agg_trades_ranges_taken"), symbols, lo.tolist(), hi.tolist()))


async def add_flush(
    conn: asyncpg.Connection,
    symbols: list[str],
    lo_ids: np.ndarray,
    hi_ids: np.ndarray,
    complete: np.ndarray,
    day_symbols: list[str],
    days: np.ndarray,
    day_first: np.ndarray,
    day_last: np.ndarray,
    day_inserted: np.ndarray,
    *,
    gap_fill: bool = False,
) -> None:
    """add_batch for every symbol of a flush (inside its transaction, under lock_symbols): per
    symbol its id range [lo_ids, hi_ids] and whether the flush held every id of it (`complete`); per
    (symbol, day) the first and last id and the rows inserted."""
    await conn.execute(
        sql("coverage_add_many"),
        day_symbols,
        _dates(days),
        day_first.tolist(),
        day_last.tolist(),
        day_inserted.tolist(),
    )
    await resolve_gaps_many(conn, symbols, lo_ids, hi_ids)
    if not gap_fill:
        await scan_gaps_many(conn, symbols, lo_ids, hi_ids, complete)


async def resolve_gaps_many(
    conn: asyncpg.Connection, symbols: list[str], lo_ids: np.ndarray, hi_ids: np.ndarray
) -> None:
    """resolve_gaps for every symbol: one read of the open gaps touched (with the stored runs inside
    each), then, only when some were touched, one delete and one insert of their parts."""
    rows = await conn.fetch(sql("gaps_touched_many"), symbols, lo_ids.tolist(), hi_ids.tolist())
    if not rows:
        return
    gone_sym: list[str] = []
    gone_from: list[int] = []
    parts: tuple[list, list, list, list, list, list] = ([], [], [], [], [], [])
    key = None
    runs: list[tuple[int, int]] = []

    def close(gap: asyncpg.Record | None, runs: list[tuple[int, int]]) -> None:
        if gap is None or not runs:
            return  # the flush spans the gap without any of its ids: still missing as it was
        sym, f, t = gap["symbol"], int(gap["from_id"]), int(gap["to_id"])
        gone_sym.append(sym)
        gone_from.append(f)
        at = f
        pieces = []
        for a, b in runs:
            if a > at:
                pieces.append((at, a - 1, "open"))
            pieces.append((a, b, "filled"))
            at = b + 1
        if at <= t:
            pieces.append((at, t, "open"))
        for a, b, status in pieces:
            for col, v in zip(parts, (sym, a, b, status, gap["detected_at"], gap["note"]), strict=True):
                col.append(v)

    gap = None
    for r in rows:
        k = (r["symbol"], r["from_id"])
        if k != key:
            close(gap, runs)
            key, gap, runs = k, r, []
        if r["run_from"] is not None:
            runs.append((int(r["run_from"]), int(r["run_to"])))
    close(gap, runs)
    if gone_sym:
        await conn.execute(sql("gaps_delete_many"), gone_sym, gone_from)
        await conn.execute(sql("gaps_split_many"), *parts)


async def scan_gaps_many(
    conn: asyncpg.Connection,
    symbols: list[str],
    lo_ids: np.ndarray,
    hi_ids: np.ndarray,
    complete: np.ndarray,
) -> list[tuple[str, int, int]]:
    """scan_gaps for every symbol in one statement (and one upsert of what it found)."""
    found = [
        (r["symbol"], int(r["from_id"]), int(r["to_id"]))
        for r in await conn.fetch(
            sql("gaps_scan_many"), symbols, lo_ids.tolist(), hi_ids.tolist(), complete.tolist()
        )
    ]
    if found:
        await conn.execute(
            sql("gaps_upsert_many"),
            [s for s, _, _ in found],
            [f for _, f, _ in found],
            [t for _, _, t in found],
        )
    return found


async def record_gaps_many(
    conn: asyncpg.Connection, symbols: list[str], from_ids: list[int], to_ids: list[int], note: str = "live"
) -> None:
    """record_gaps for gaps of several symbols (one element of each list per gap)."""
    await conn.execute(sql("gaps_record_many"), symbols, from_ids, to_ids, note)
