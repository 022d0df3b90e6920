"""Raw tables for every kind the collectors write, plus ingest bookkeeping.

Times are timestamptz holding the exchange's millisecond times exactly; `recv_ts` is the local
receive time where the data came live. Natural keys make every write idempotent; each key ends in
(or contains) the time column so that the same key works as a hypertable unique index.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

from microstructure.db.capabilities import detect
from microstructure.db.tables import TIME_TABLES

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES_SQL = """
CREATE TABLE microstructure_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE microstructure_meta IS 'Schema facts recorded at migration time (engine, versions).';

CREATE TABLE agg_trades (
    symbol          text             NOT NULL,
    agg_id          bigint           NOT NULL,
    ts              timestamptz      NOT NULL,  -- trade time T
    price           double precision NOT NULL,
    quantity        double precision NOT NULL,
    first_trade_id  bigint           NOT NULL,
    last_trade_id   bigint           NOT NULL,
    is_buyer_maker  boolean          NOT NULL,  -- true: the aggressor sold
    recv_ts         timestamptz,                -- local receive time (live rows only)
    PRIMARY KEY (symbol, agg_id, ts)
);
COMMENT ON TABLE agg_trades IS 'Binance USD-M aggregate trades; (symbol, agg_id) is the natural key.';

CREATE TABLE book_snapshots (
    symbol          text               NOT NULL,
    ts              timestamptz        NOT NULL,  -- transaction time T
    event_ts        timestamptz        NOT NULL,  -- event time E
    first_update_id bigint,                       -- U
    last_update_id  bigint             NOT NULL,  -- u
    prev_update_id  bigint,                       -- pu
    source          text               NOT NULL DEFAULT 'depth20',  -- depth20 stream or local diff book
    bid_px          double precision[] NOT NULL,  -- level 1 = best
    bid_qty         double precision[] NOT NULL,
    ask_px          double precision[] NOT NULL,
    ask_qty         double precision[] NOT NULL,
    mid                   double precision,
    spread                double precision,
    spread_bps            double precision,
    weighted_mid_diff_bps double precision,
    imbalance_5           double precision,
    imbalance_10          double precision,
    imbalance_20          double precision,
    bid_slope             double precision,
    ask_slope             double precision,
    bid_vol_ratio_5_20    double precision,
    ask_vol_ratio_5_20    double precision,
    ofi                   double precision,  -- level-1 OFI term against the symbol's previous snapshot
    recv_ts               timestamptz,
    PRIMARY KEY (symbol, ts, last_update_id)
);
COMMENT ON TABLE book_snapshots IS 'Top-20 order book every 500 ms with the per-snapshot values the book features use.';

CREATE TABLE mark_prices (
    symbol           text             NOT NULL,
    ts               timestamptz      NOT NULL,  -- event time E
    mark_price       double precision NOT NULL,
    index_price      double precision,
    est_settle_price double precision,
    funding_rate     double precision,           -- r: the current (predicted) funding rate
    next_funding_ts  timestamptz,
    recv_ts          timestamptz,
    PRIMARY KEY (symbol, ts)
);

CREATE TABLE funding_rates (
    symbol                 text             NOT NULL,
    funding_ts             timestamptz      NOT NULL,  -- settlement time
    funding_rate           double precision NOT NULL,
    mark_price             double precision,
    funding_interval_hours integer,
    PRIMARY KEY (symbol, funding_ts)
);
COMMENT ON TABLE funding_rates IS 'Settled funding rates (REST /fapi/v1/fundingRate and monthly archives).';

CREATE TABLE open_interest (
    symbol              text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    open_interest       double precision NOT NULL,  -- contracts
    open_interest_value double precision,           -- quote units, when known
    source              text             NOT NULL,  -- rest | hist | metrics
    PRIMARY KEY (symbol, ts)
);

CREATE TABLE liquidations (
    symbol          text             NOT NULL,
    ts              timestamptz      NOT NULL,  -- event time E
    trade_ts        timestamptz      NOT NULL,  -- order trade time o.T
    side            text             NOT NULL CHECK (side IN ('BUY', 'SELL')),
    order_type      text,
    time_in_force   text,
    quantity        double precision NOT NULL,
    price           double precision NOT NULL,
    avg_price       double precision,
    status          text,
    last_filled_qty double precision,
    filled_qty      double precision,
    recv_ts         timestamptz,
    PRIMARY KEY (symbol, ts, trade_ts, side, price, quantity)
);
COMMENT ON TABLE liquidations IS 'forceOrder events. The exchange samples them (at most one per symbol per second): counts and volumes are lower bounds.';

CREATE TABLE book_depth_bands (
    symbol     text             NOT NULL,
    ts         timestamptz      NOT NULL,
    percentage real             NOT NULL,  -- -5..-1 bids, 1..5 asks, percent from mid
    depth      double precision NOT NULL,  -- cumulative quantity within the band
    notional   double precision NOT NULL,
    PRIMARY KEY (symbol, ts, percentage)
);
COMMENT ON TABLE book_depth_bands IS 'data.binance.vision bookDepth archives: cumulative depth within +-1..5 % of mid, ~30 s apart. Not a 20-level book.';

CREATE TABLE futures_metrics (
    symbol                           text        NOT NULL,
    ts                               timestamptz NOT NULL,
    sum_open_interest                double precision,
    sum_open_interest_value          double precision,
    count_toptrader_long_short_ratio double precision,
    sum_toptrader_long_short_ratio   double precision,
    count_long_short_ratio           double precision,
    sum_taker_long_short_vol_ratio   double precision,
    PRIMARY KEY (symbol, ts)
);
COMMENT ON TABLE futures_metrics IS 'data.binance.vision metrics archives (5-minute open interest and long/short ratios).';

CREATE TABLE price_klines (
    symbol   text             NOT NULL,
    kind     text             NOT NULL CHECK (kind IN ('mark', 'index', 'premium')),
    ts       timestamptz      NOT NULL,  -- open time
    open     double precision NOT NULL,
    high     double precision NOT NULL,
    low      double precision NOT NULL,
    close    double precision NOT NULL,
    close_ts timestamptz      NOT NULL,
    PRIMARY KEY (symbol, kind, ts)
);
COMMENT ON TABLE price_klines IS '1m mark / index / premium-index klines from their archives.';

CREATE TABLE symbol_settings (
    symbol               text PRIMARY KEY,
    large_trade_notional double precision NOT NULL DEFAULT 100000 CHECK (large_trade_notional > 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE symbol_settings IS 'Per-symbol settings; a symbol without a row uses the defaults.';

CREATE TABLE ingest_checkpoints (
    collector  text        NOT NULL,
    symbol     text        NOT NULL,
    last_id    bigint,
    last_ts    timestamptz,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collector, symbol)
);

CREATE TABLE agg_trade_coverage (
    symbol        text        NOT NULL,
    day           date        NOT NULL,  -- UTC day of the trade time
    first_id      bigint      NOT NULL,
    last_id       bigint      NOT NULL,
    row_count     bigint      NOT NULL,
    missing_count bigint      NOT NULL,  -- ids in [first_id, last_id] not stored
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, day)
);

CREATE TABLE agg_trade_gaps (
    symbol      text        NOT NULL,
    from_id     bigint      NOT NULL,  -- first missing id
    to_id       bigint      NOT NULL,  -- last missing id (inclusive)
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'filled', 'unfillable')),
    detected_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    note        text,
    PRIMARY KEY (symbol, from_id),
    CHECK (to_id >= from_id)
);

CREATE TABLE ingest_events (
    id        bigserial PRIMARY KEY,
    ts        timestamptz NOT NULL DEFAULT now(),
    collector text        NOT NULL,
    symbol    text,
    kind      text        NOT NULL,  -- resync, poll_miss, malformed, reconnect, checksum_mismatch, ...
    detail    jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX ingest_events_kind_ts ON ingest_events (kind, ts DESC);
"""


# Time-ordered indexes beyond the primary keys (which already lead with symbol, then time where it
# matters). agg_trades is keyed by id, so time range scans need their own index.
PLAIN_INDEXES_SQL = """
CREATE INDEX agg_trades_symbol_ts ON agg_trades (symbol, ts);
CREATE INDEX liquidations_ts ON liquidations (ts);
"""

OTHER_TABLES = (
    "symbol_settings",
    "ingest_checkpoints",
    "agg_trade_coverage",
    "agg_trade_gaps",
    "ingest_events",
    "microstructure_meta",
)


def upgrade() -> None:
    conn = op.get_bind()
    caps = detect(conn, override=op.get_context().config.attributes.get("engine"))
    op.execute(TABLES_SQL)
    op.execute(PLAIN_INDEXES_SQL)
    if caps.hypertables:
        for t in TIME_TABLES:
            op.execute(
                f"SELECT create_hypertable('{t.name}', '{t.time_column}', "
                f"chunk_time_interval => INTERVAL '{t.chunk_interval}', create_default_indexes => false)"
            )
    if caps.compression:
        for t in TIME_TABLES:
            op.execute(
                f"ALTER TABLE {t.name} SET (timescaledb.compress, "
                f"timescaledb.compress_segmentby = '{t.segment_by}', "
                f"timescaledb.compress_orderby = '{t.order_by}')"
            )
            op.execute(f"SELECT add_compression_policy('{t.name}', INTERVAL '{t.compress_after}')")
    meta = {
        "engine": caps.engine,
        "server_version": caps.server_version,
        "timescaledb_version": caps.timescaledb_version or "",
    }
    for key, value in meta.items():
        op.get_bind().exec_driver_sql(
            "INSERT INTO microstructure_meta (key, value) VALUES (%(k)s, %(v)s)", {"k": key, "v": value}
        )


def downgrade() -> None:
    for t in reversed(TIME_TABLES):
        op.execute(f"DROP TABLE IF EXISTS {t.name} CASCADE")
    for name in OTHER_TABLES:
        op.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
