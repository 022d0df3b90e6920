"""The feature stages and views: which SQL file builds each, from what, at which width, in what order.

Every stage is one SELECT (a `.sql` file beside this module) grouping its source by
`time_bucket(width, ...)`. On TimescaleDB with continuous aggregates each stage is a continuous
aggregate (stage 1 over a raw hypertable, the others hierarchical over the finer stage); elsewhere
it is a table of the same name and shape that the refresher fills by running the same SELECT over a
window. The files hold `{width}` and `{source}` placeholders, filled only from the table below
(never from user input). `features_view.sql` is rendered once per timeframe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

TIMEFRAMES: dict[str, str] = {"1m": "1 minute", "5m": "5 minutes", "15m": "15 minutes"}
TIMEFRAME_SECONDS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900}


@dataclass(frozen=True)
class Stage:
    """One materialised stage: `name` is built by `sql_file` from `source` in `width` buckets."""

    name: str
    group: str  # trades | book | book_depth | market | market_klines | open_interest | liquidations
    width: str  # a PostgreSQL interval, e.g. '1 minute'
    seconds: int
    source: str  # a raw table (stage 1) or the finer stage
    sql_file: str
    raw_table: str  # the raw table whose rows feed this stage (directly or through finer stages)
    time_column: str = "bucket"  # of the source: ts for raw tables

    @property
    def from_raw(self) -> bool:
        return self.source == self.raw_table

    def select_sql(self) -> str:
        """The stage's SELECT with its placeholders filled."""
        return _render(self.sql_file, width=self.width, source=self.source)


def _bar_stages(group: str, raw: str, prefix: str, raw_file: str, rollup_file: str) -> list[Stage]:
    """A group's 1m stage from the raw table, then 5m from 1m and 15m from 5m."""
    out = [Stage(f"{prefix}_1m", group, TIMEFRAMES["1m"], 60, raw, raw_file, raw, "ts")]
    return out + _rollups(group, raw, prefix, out[0].name, rollup_file)


def _rollups(group: str, raw: str, prefix: str, finer: str, rollup_file: str) -> list[Stage]:
    """`prefix`_5m from `finer` (the 1m stage), then `prefix`_15m from the 5m."""
    out = []
    for tf in ("5m", "15m"):
        out.append(
            Stage(f"{prefix}_{tf}", group, TIMEFRAMES[tf], TIMEFRAME_SECONDS[tf], finer, rollup_file, raw)
        )
        finer = out[-1].name
    return out


def _trade_stages() -> list[Stage]:
    """The one scan of agg_trades: per-second partials (trades_1s), which every trade column rolls up
    from: the bars 1m -> 5m -> 15m, and the intensity chain 5 s -> 10 s (carrying the busiest finer
    sub-buckets) -> 1m -> 5m -> 15m. One group: every stage depends on trades_1s."""
    raw, group = "agg_trades", "trades"
    first = Stage("trades_1s", group, "1 second", 1, raw, "trades_raw.sql", raw, "ts")
    bars = [Stage("trades_1m", group, TIMEFRAMES["1m"], 60, first.name, "trades_bar.sql", raw)]
    bars += _rollups(group, raw, "trades", bars[0].name, "trades_rollup.sql")
    chain = [
        Stage("trade_counts_5s", group, "5 seconds", 5, first.name, "trade_counts_5s.sql", raw),
        Stage("trade_counts_10s", group, "10 seconds", 10, "trade_counts_5s", "trade_counts_10s.sql", raw),
        Stage("trade_intensity_1m", group, TIMEFRAMES["1m"], 60, "trade_counts_10s", "trade_intensity_bar.sql", raw),
    ]  # fmt: skip
    chain += _rollups(group, raw, "trade_intensity", chain[-1].name, "trade_intensity_rollup.sql")
    return [first, *bars, *chain]


# The per-second trade counts stage the quality stages read (the one place that names it).
TRADE_SECONDS_SOURCE = "trades_1s"


def _trade_seconds_stages() -> list[Stage]:
    """Quality: seconds holding a trade per 1m bar (from the per-second trade partials) -> 5m -> 15m.
    In the trades group, after the per-second stage it reads (a group is one ordered chain)."""
    raw, group = "agg_trades", "trades"
    first = Stage(
        "trade_seconds_1m", group, TIMEFRAMES["1m"], 60, TRADE_SECONDS_SOURCE, "trade_seconds_bar.sql", raw
    )
    return [first, *_rollups(group, raw, "trade_seconds", first.name, "trade_seconds_rollup.sql")]


# In dependency order: every stage comes after the stage it reads.
STAGES: tuple[Stage, ...] = (
    *_trade_stages(),
    *_trade_seconds_stages(),
    *_bar_stages("book", "book_snapshots", "book", "book_raw.sql", "book_rollup.sql"),
    # the bookDepth archive's bands (docs/FEATURES.md "Book depth bands"): the book over history
    *_bar_stages(
        "book_depth", "book_depth_bands", "book_depth", "book_depth_raw.sql", "book_depth_rollup.sql"
    ),
    *_bar_stages("market", "mark_prices", "market", "market_raw.sql", "market_rollup.sql"),
    # history's mark / index: the 1m klines of the archives (the view prefers the stream, bar by bar)
    *_bar_stages(
        "market_klines", "price_klines", "market_klines", "market_klines_raw.sql", "market_klines_rollup.sql"
    ),
    *_bar_stages(
        "open_interest", "open_interest", "open_interest", "open_interest_raw.sql", "open_interest_rollup.sql"
    ),
    *_bar_stages(
        "liquidations", "liquidations", "liquidations", "liquidations_raw.sql", "liquidations_rollup.sql"
    ),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}

# Raw tables whose rows feed the stages (what an invalidation of each table re-materialises).
RAW_TABLES: tuple[str, ...] = tuple(dict.fromkeys(s.raw_table for s in STAGES))

# Not a table: the name an invalidation carries when the feature definitions themselves changed
# (features_sql/layer.py): every stage of the logged symbol and span is re-materialised, feature
# exports re-export, raw exports are untouched.
LAYER_TABLE = "feature_layer"

# What the views read directly, beside the stages: settled funding (carried into quiet bars). The
# quality columns also read agg_trade_gaps, ingest_events and the stored trades around each bar and
# gap (docs/FEATURES.md "Quality"); those are not listed here (retention would never drop agg_trades).
VIEW_RAW_TABLES = ("funding_rates",)


def stages_for(raw_tables: set[str] | frozenset[str] | None = None) -> list[Stage]:
    """The stages (dependency order) that rows of `raw_tables` feed; every stage for None."""
    return [s for s in STAGES if raw_tables is None or s.raw_table in raw_tables]


def view_name(tf: str) -> str:
    return f"features_{tf}"


def view_sql(tf: str) -> str:
    """The SELECT of features_<tf>."""
    if tf not in TIMEFRAMES:
        raise ValueError(f"timeframe: expected one of {', '.join(TIMEFRAMES)}, got {tf!r}")
    return _render("features_view.sql", tf=tf, width=TIMEFRAMES[tf])


@cache
def sql_text(name: str) -> str:
    return resources.files("microstructure.features_sql").joinpath(name).read_text()


def _render(name: str, **values: str) -> str:
    text = sql_text(name)
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    if "{" in text.replace("{}", ""):
        raise ValueError(f"{name}: a placeholder was left unfilled")
    return text


# The quality columns (docs/FEATURES.md "Quality"), last in every features_<tf> view: how complete
# each bar's sources were. Never NULL except oi_age_s (no open interest yet) and quiet_s (the bar's
# trade stream is not known on both sides).
QUALITY_COLUMNS: tuple[str, ...] = (
    "trade_ids_missing", "trades_complete", "book_coverage", "book_resyncs", "mark_coverage", "oi_age_s",
    "quiet_s",
)  # fmt: skip

# Book depth bands (docs/FEATURES.md "Book depth bands"), after the book group: per band of the
# bookDepth archive (0.2 % recorded by 2026 files only; 1..5 %), in view order.
DEPTH_BAND_LABELS = ("0p2", "1", "2", "3", "4", "5")
BOOK_DEPTH_COLUMNS: tuple[str, ...] = tuple(
    f"{kind}_{band}pct"
    for kind in ("depth_imbalance", "notional_imbalance", "bid_depth", "ask_depth")
    for band in DEPTH_BAND_LABELS
)

# The columns of every features_<tf> view after symbol, bucket and bucket_end (FEATURES.md's names).
FEATURE_COLUMNS: tuple[str, ...] = (
    "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "fill_count", "buy_volume",
    "sell_volume", "volume_delta", "cvd", "vwap", "buy_pressure", "trade_intensity_1s", "trade_intensity_5s",
    "trade_intensity_10s", "large_trade_count", "large_trade_volume", "large_trade_pct",
    "imbalance_5", "imbalance_10", "imbalance_20", "spread_avg", "spread_std", "spread_bps_avg",
    "weighted_mid_diff_bps", "bid_slope", "ask_slope", "bid_vol_ratio_5_20", "ask_vol_ratio_5_20", "ofi",
    "snapshot_count",
    *BOOK_DEPTH_COLUMNS,
    "mark_price", "index_price", "spot_premium_pct", "funding_rate", "funding_rate_predicted", "funding_delta",
    "open_interest", "oi_change_pct", "liq_long_vol", "liq_short_vol", "liq_ratio",
    *QUALITY_COLUMNS,
)  # fmt: skip
COUNT_COLUMNS = frozenset(
    {"trade_count", "fill_count", "large_trade_count", "snapshot_count", "trade_ids_missing", "book_resyncs"}
)
BOOL_COLUMNS = frozenset({"trades_complete"})
# Sampled by the exchange (at most one liquidation per symbol per second): lower bounds.
LOWER_BOUND_COLUMNS = ("liq_long_vol", "liq_short_vol", "liq_ratio")
