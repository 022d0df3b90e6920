"""Day partitions as rows arrive: the days of the day-partitioned tables a batch needs, made before
the batch is written.

On plain PostgreSQL `agg_trades` and `book_snapshots` are partitioned by UTC day with no default
partition (revision 0006), so a row of a day without its partition is refused. The writer asks
`DayPartitions.ensure` first, in a transaction of its own (not under the symbol's lock the batch takes,
so it never waits on a bulk load of that day while holding it). What exists is remembered per
process, so a stream's batches cost no round trip after the first of the day; `forget` drops that
memory when the database says a partition is gone (retention dropped it).
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from microstructure.ingest.sink.coverage import DAY_MS, sql

DAY_PARTITIONED = frozenset({"agg_trades", "book_snapshots"})


def is_missing_partition(exc: BaseException) -> bool:
    """The database refused a row because its day has no partition."""
    return isinstance(exc, asyncpg.exceptions.CheckViolationError) and "no partition of relation" in str(exc)


class DayPartitions:
    """The days (ms // DAY_MS) known to have their partition, per table."""

    def __init__(self) -> None:
        self._known: dict[str, set[int]] = {}

    async def ensure(self, conn: asyncpg.Connection, table: str, lo_ms: int, hi_ms: int) -> None:
        if table not in DAY_PARTITIONED:
            return
        days = range(lo_ms // DAY_MS, hi_ms // DAY_MS + 1)
        known = self._known.setdefault(table, set())
        if all(d in known for d in days):
            return
        lo = datetime.fromtimestamp(lo_ms / 1000, tz=UTC)
        hi = datetime.fromtimestamp(hi_ms / 1000, tz=UTC)
        await conn.execute(sql("partitions_ensure"), table, lo, hi)
        known.update(days)

    def forget(self, table: str) -> None:
        self._known.pop(table, None)
