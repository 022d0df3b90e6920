"""DDL of the feature layer: the invalidation log, the stages (continuous aggregates or tables) and
the features_1m / _5m / _15m views, for the engine the migration detected.

TimescaleDB with continuous aggregates: each stage is a continuous aggregate (real-time
aggregation on, a refresh policy, columnstore on older materialised ranges). Plain PostgreSQL and
Apache-only TimescaleDB: each stage is a table of the same name and shape (`CREATE TABLE AS <the
stage's SELECT> WITH NO DATA`, keyed by (symbol, bucket)), filled by the refresher. The views are
the same text on every engine.

Policy settings (read when the migration runs; TimescaleDB only):
    MICROSTRUCTURE_CAGG_START_OFFSET     refresh window start, before now      (default 3 hours)
    MICROSTRUCTURE_CAGG_END_OFFSET       refresh window end, before now        (default: one bucket)
    MICROSTRUCTURE_CAGG_SCHEDULE         how often each policy runs            (default 1 minute)
    MICROSTRUCTURE_CAGG_COMPRESS_AFTER   columnstore for buckets older than    (default 7 days)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from microstructure.features_sql.docs import comment_sql
from microstructure.features_sql.stages import (
    FEATURE_COLUMNS,
    STAGES,
    TIMEFRAMES,
    Stage,
    sql_text,
    view_name,
    view_sql,
)  # fmt: skip

# SQL functions the views call (docs/FEATURES.md "Quality"): files, and signatures to drop them by.
QUALITY_FUNCTION_FILES = ("quality_gap_spans.sql", "quality_trade_bounds.sql")
QUALITY_FUNCTIONS = ("microstructure_gap_spans()", "microstructure_trade_bounds()")
# functions of older layers, dropped by a rebuild (features_sql/layer.py)
RETIRED_FUNCTIONS = ("microstructure_trades_known(text, timestamptz, timestamptz)",)

INTERVAL_RE = re.compile(r"^\d+ (second|minute|hour|day|week)s?$")

LOG_SQL = """
CREATE TABLE raw_invalidations (
    id         bigserial   PRIMARY KEY,
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    table_name text        NOT NULL,
    symbol     text        NOT NULL,
    lo         timestamptz NOT NULL,  -- the time range of rows a write touched, both ends included
    hi         timestamptz NOT NULL,
    logged_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (hi >= lo)
);
CREATE INDEX raw_invalidations_xid ON raw_invalidations (xid);
COMMENT ON TABLE raw_invalidations IS 'Ranges of raw rows each write touched, logged in the write''s own transaction; consumed by the feature refresher and the Parquet export (each keeps its own cursor).';

CREATE TABLE invalidation_cursors (
    consumer   text        PRIMARY KEY,
    horizon    xid8        NOT NULL,  -- every invalidation of a transaction below this is consumed
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feature_watermarks (
    stage        text        PRIMARY KEY,
    refreshed_to timestamptz,           -- end of the newest bucket materialised
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE feature_watermarks IS 'Plain PostgreSQL: how far the refresher has materialised each stage.';
"""

DROP_LOG_SQL = """
DROP TABLE IF EXISTS feature_watermarks;
DROP TABLE IF EXISTS invalidation_cursors;
DROP TABLE IF EXISTS raw_invalidations;
"""


def _interval(name: str, default: str) -> str:
    value = (os.environ.get("MICROSTRUCTURE_" + name) or default).strip()
    if not INTERVAL_RE.match(value):
        from microstructure.config import SettingError

        raise SettingError(f"MICROSTRUCTURE_{name}: expected an interval like '3 hours', got {value!r}")
    return value


@dataclass(frozen=True)
class PolicySettings:
    start_offset: str = field(default_factory=lambda: _interval("CAGG_START_OFFSET", "3 hours"))
    end_offset: str | None = field(
        default_factory=lambda: (
            _interval("CAGG_END_OFFSET", "") if os.environ.get("MICROSTRUCTURE_CAGG_END_OFFSET") else None
        )
    )
    schedule: str = field(default_factory=lambda: _interval("CAGG_SCHEDULE", "1 minute"))
    compress_after: str = field(default_factory=lambda: _interval("CAGG_COMPRESS_AFTER", "7 days"))

    def end_for(self, stage: Stage) -> str:
        return self.end_offset or stage.width


def continuous_aggregate_sql(stage: Stage, policy: PolicySettings) -> list[str]:
    return [
        f"CREATE MATERIALIZED VIEW {stage.name} WITH (timescaledb.continuous, "
        f"timescaledb.materialized_only = false) AS\n{stage.select_sql()}\nWITH NO DATA",
        f"SELECT add_continuous_aggregate_policy('{stage.name}', start_offset => INTERVAL '{policy.start_offset}', "
        f"end_offset => INTERVAL '{policy.end_for(stage)}', schedule_interval => INTERVAL '{policy.schedule}')",
        f"ALTER MATERIALIZED VIEW {stage.name} SET (timescaledb.compress = true)",
        f"SELECT add_compression_policy('{stage.name}', compress_after => INTERVAL '{policy.compress_after}')",
    ]


def stage_table_sql(stage: Stage) -> list[str]:
    return [
        f"CREATE TABLE {stage.name} AS\n{stage.select_sql()}\nWITH NO DATA",
        f"ALTER TABLE {stage.name} ADD PRIMARY KEY (symbol, bucket)",
        f"COMMENT ON TABLE {stage.name} IS 'Feature stage ({stage.width} buckets of {stage.source}), "
        f"kept by the incremental refresher (microstructure features refresh).'",
    ]


def view_ddl(tf: str) -> str:
    return f"CREATE VIEW {view_name(tf)} AS\n{view_sql(tf)}"


def layer_create_sql(continuous_aggregates: bool, policy: PolicySettings | None = None) -> list[str]:
    """The stages, the quality functions and the views with their comments: what a change of the
    feature SQL rebuilds (features_sql/layer.py); the invalidation log is not part of it."""
    out: list[str] = []
    for stage in STAGES:
        if continuous_aggregates:
            out += continuous_aggregate_sql(stage, policy or PolicySettings())
        else:
            out += stage_table_sql(stage)
    out += [sql_text(f) for f in QUALITY_FUNCTION_FILES]
    out += [view_ddl(tf) for tf in TIMEFRAMES]
    for tf in TIMEFRAMES:
        out.append(
            f"COMMENT ON VIEW {view_name(tf)} IS 'Microstructure features, {TIMEFRAMES[tf]} bars (docs/FEATURES.md). "
            "liq_* are lower bounds: the exchange samples liquidations.'"
        )
        out += comment_sql(view_name(tf), ("symbol", "bucket", "bucket_end", *FEATURE_COLUMNS))
    return out


def create_sql(continuous_aggregates: bool, policy: PolicySettings | None = None) -> list[str]:
    """Every statement that builds the feature layer, in order."""
    return [LOG_SQL, *layer_create_sql(continuous_aggregates, policy)]


def layer_drop_sql(continuous_aggregates: bool, stage_names: Sequence[str] = ()) -> list[str]:
    """Drop the views, the quality functions and the stages: the current ones and `stage_names`
    (the stages an older layer had, which the current code may no longer know)."""
    out = [f"DROP VIEW IF EXISTS {view_name(tf)}" for tf in TIMEFRAMES]
    out += [f"DROP FUNCTION IF EXISTS {sig}" for sig in (*QUALITY_FUNCTIONS, *RETIRED_FUNCTIONS)]
    kind = "MATERIALIZED VIEW" if continuous_aggregates else "TABLE"
    names = dict.fromkeys([*(s.name for s in reversed(STAGES)), *stage_names])
    out += [f"DROP {kind} IF EXISTS {name} CASCADE" for name in names]
    return out


def drop_sql(continuous_aggregates: bool) -> list[str]:
    return [*layer_drop_sql(continuous_aggregates), DROP_LOG_SQL]
