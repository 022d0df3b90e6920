"""Keep a database's feature layer equal to the code's: rebuild it when the feature SQL changed.

Revision 0004 builds the feature layer (stages, quality functions, views) from the SQL of the code
that runs it. A later release that changes a stage, a view or a column would otherwise leave an
existing database on the old definitions. So the layer's fingerprint (a digest of every statement
that defines it, policy settings excluded) and its stage names are kept in `microstructure_meta`,
and every `db upgrade` (which every writer runs at start) compares them with the code's:

- equal: nothing happens;
- different or unknown (a database from before fingerprints): in the migration's transaction,
  under the migration lock, the old layer is dropped (its recorded stages too, and the stages
  older releases had), the current one created, the stage watermarks cleared, and one invalidation
  per symbol (table `feature_layer`, from its first to its last raw row) logged. The refresher then
  re-materialises every stage over the whole history (on TimescaleDB: refresh_continuous_aggregate;
  real-time aggregation answers meanwhile), and feature exports re-export their hours. Raw exports
  are not touched: their data did not change.

The raw tables, the invalidation log and its cursors are kept.
"""

from __future__ import annotations

import hashlib
import logging
import re

from sqlalchemy import Connection, text

from microstructure.features_sql.docs import comment_sql
from microstructure.features_sql.schema import (
    QUALITY_FUNCTION_FILES,
    PolicySettings,
    layer_create_sql,
    layer_drop_sql,
    view_ddl,
)
from microstructure.features_sql.stages import (
    FEATURE_COLUMNS,
    LAYER_TABLE,
    RAW_TABLES,
    STAGES,
    TIMEFRAMES,
    sql_text,
    view_name,
)

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "features_fingerprint"
STAGES_KEY = "features_stages"
# stages of releases before the stage names were recorded
RETIRED_STAGES = ("trade_counts_1s",)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def fingerprint(continuous_aggregates: bool) -> str:
    """Digest of the layer's definition on this engine: each stage's name and SELECT, the quality
    functions, the views and their comments (not the refresh/compression policy settings)."""
    h = hashlib.sha256(b"caggs" if continuous_aggregates else b"refresher")
    parts = [f"{s.name}\n{s.select_sql()}" for s in STAGES]
    parts += [sql_text(f) for f in QUALITY_FUNCTION_FILES]
    for tf in TIMEFRAMES:
        parts.append(view_ddl(tf))
        parts += comment_sql(view_name(tf), ("symbol", "bucket", "bucket_end", *FEATURE_COLUMNS))
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:32]


def _meta(conn: Connection) -> dict[str, str]:
    rows = conn.execute(text("SELECT key, value FROM microstructure_meta")).all()
    return {str(k): str(v) for k, v in rows}


def _set(conn: Connection, key: str, value: str) -> None:
    conn.execute(
        text(
            "INSERT INTO microstructure_meta (key, value) VALUES (:k, :v) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ),
        {"k": key, "v": value},
    )


def record(conn: Connection, continuous_aggregates: bool) -> None:
    """Note that the layer now in the database is the code's (after creating it)."""
    _set(conn, FINGERPRINT_KEY, fingerprint(continuous_aggregates))
    _set(conn, STAGES_KEY, ",".join(s.name for s in STAGES))


def log_whole_history(conn: Connection) -> int:
    """One `feature_layer` invalidation per symbol, from its first to its last row in any raw table
    the stages read. Returns the number of symbols."""
    spans: dict[str, tuple[object, object]] = {}
    template = sql_text("layer_spans.sql")
    for table in RAW_TABLES:  # the code's own table names, never user input
        for symbol, lo, hi in conn.execute(text(template.replace("{table}", table))).all():
            if lo is None:
                continue
            old = spans.get(symbol)
            spans[symbol] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))  # type: ignore[type-var]
    if spans:
        conn.execute(
            text(
                "INSERT INTO raw_invalidations (table_name, symbol, lo, hi) "
                "SELECT :t, s, lo, hi FROM unnest(CAST(:s AS text[]), CAST(:lo AS timestamptz[]), "
                "CAST(:hi AS timestamptz[])) AS x(s, lo, hi)"
            ),
            {
                "t": LAYER_TABLE,
                "s": list(spans),
                "lo": [v[0] for v in spans.values()],
                "hi": [v[1] for v in spans.values()],
            },
        )
    return len(spans)


def ensure_current(conn: Connection) -> bool:
    """Rebuild the feature layer if its definition differs from the code's (see the module's
    docstring). Runs inside the caller's transaction. True when it rebuilt."""
    meta = _meta(conn)
    engine = meta.get("features")
    if engine is None:  # the layer is not there (a schema below revision 0004)
        return False
    caggs = engine == "continuous_aggregates"
    if meta.get(FINGERPRINT_KEY) == fingerprint(caggs):
        return False
    old = [n for n in meta.get(STAGES_KEY, "").split(",") if _NAME.match(n)]
    for statement in layer_drop_sql(caggs, [*old, *RETIRED_STAGES]):
        conn.execute(text(statement))
    for statement in layer_create_sql(caggs, PolicySettings() if caggs else None):
        conn.execute(text(statement))
    conn.execute(text("DELETE FROM feature_watermarks"))
    symbols = log_whole_history(conn)
    record(conn, caggs)
    log.warning(
        "the feature definitions changed: feature layer rebuilt; %d symbol(s) queued for a full refresh "
        "(`microstructure features refresh`, or the running collector's refresher)",
        symbols,
    )
    return True
