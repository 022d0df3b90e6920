"""Hand-made bookDepth band rows for the band-feature tests, beside fx_cases' rows.

Day 1 (before midnight) is a file of the old format: bands -5..-1 and 1..5 only. Day 2 (from
midnight) is a 2026 file with the +-0.2 bands too, loaded the way the reconcilers load a published
day (sink.reload_archive_day: delete the day, merge, log the day for the features).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fx_cases import MIDNIGHT, MIN, OTHER, SYM, T0

from microstructure.ingest.records import BOOK_DEPTH_BANDS
from microstructure.ingest.sink.reconcile import reload_archive_day
from microstructure.ingest.sink.writer import merge_table

OLD_BANDS = (-5.0, -4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0)
NEW_BANDS = (-5.0, -4.0, -3.0, -2.0, -1.0, -0.2, 0.2, 1.0, 2.0, 3.0, 4.0, 5.0)
S = 1000
# Day 1 snapshots: two in 23:50, one in 23:51 (no trades there), none in 23:52 / 23:53 (bars that
# other sources make), one exactly at 23:54:00, then every 30 s to 23:57:30. 23:58 and 23:59 stay
# without any row (no bar).
DAY1 = [T0 + 5 * S, T0 + 35 * S, T0 + MIN + 10 * S, *(T0 + 4 * MIN + k * 30 * S for k in range(8))]
DAY2 = [MIDNIGHT + k * 30 * S for k in range(7)]  # 00:00:00 .. 00:03:00
PARTIAL = T0 + 6 * MIN + 30 * S  # this snapshot has no -3 row (the band is absent, not 0)


def band_rows(times: list[int], bands: tuple[float, ...], rng: np.random.Generator, symbol: str) -> pa.Table:
    """Cumulative depth per side: the wider band holds the narrower one."""
    ts, pct, depth, notional = [], [], [], []
    for t in times:
        for side in (-1, 1):
            side_bands = sorted((b for b in bands if np.sign(b) == side), key=abs)
            cum = 0.0
            for b in side_bands:
                cum += float(rng.integers(1, 400)) / 4
                if t == PARTIAL and b == -3.0:
                    continue
                ts.append(t)
                pct.append(b)
                depth.append(cum)
                notional.append(cum * (100 + b) * (1 + float(rng.random()) / 100))
    return pa.table(
        {
            "symbol": pa.array([symbol] * len(ts), pa.string()),
            "ts": pa.array(ts, pa.int64()),
            "percentage": pa.array(pct, pa.float64()),
            "depth": pa.array(depth, pa.float64()),
            "notional": pa.array(notional, pa.float64()),
        }
    )


async def write_band_cases(dsn: str) -> dict[str, Any]:
    """Day 1 as the historical loader writes it (merge_table), day 2 as a reconciler reloads a
    published day; OTHER has one snapshot whose 1 % bands are both empty (depth 0)."""
    rng = np.random.default_rng(11)
    conn = await asyncpg.connect(dsn)
    try:
        day1 = band_rows(DAY1, OLD_BANDS, rng, SYM)
        await merge_table(conn, "book_depth_bands", day1, BOOK_DEPTH_BANDS)
        day2 = band_rows(DAY2, NEW_BANDS, rng, SYM)
        day = datetime.fromtimestamp(MIDNIGHT / 1000, tz=UTC).date()
        await reload_archive_day(conn, "bookDepth", SYM, day, day2, BOOK_DEPTH_BANDS, "0" * 64)
        other = band_rows([T0 + 2 * S], OLD_BANDS, rng, OTHER)
        zero = pc.is_in(other.column("percentage"), pa.array([-1.0, 1.0]))
        for i, col in ((3, "depth"), (4, "notional")):
            other = other.set_column(i, col, pc.if_else(zero, 0.0, other.column(col)))
        await merge_table(conn, "book_depth_bands", other, BOOK_DEPTH_BANDS)
    finally:
        await conn.close()
    return {"day1": day1, "day2": day2, "other": other}
