"""What can be exported: each type's SQL (export/sql/), its source tables and its time column.

Every file of a type has the same documented columns (README, "Parquet export"): `timestamp` first,
int64 milliseconds since the epoch (UTC), then the type's columns (its SELECT), `symbol` last (added
by the exporter). Every other time column is int64 milliseconds too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from microstructure.features_sql.stages import FEATURE_COLUMNS, LAYER_TABLE, RAW_TABLES, TIMEFRAMES, view_name


@dataclass(frozen=True)
class ExportType:
    name: str
    sql_file: str
    sources: tuple[str, ...]  # the tables whose writes (the invalidation log) change its files
    timeframe: str | None = None  # features types: the bar width
    # every column fixed-width and NOT NULL: read by binary COPY decoded with numpy (name, pg type)
    fixed_columns: tuple[tuple[str, str], ...] | None = None

    @property
    def is_features(self) -> bool:
        return self.timeframe is not None

    def sql(self) -> str:
        text = _sql_text(self.sql_file)
        if self.timeframe is not None:
            text = text.replace("{finality}", finality_sql("ARRAY[$1::text]", EXPORT_LATENESS_SQL))
            text = text.replace("{tf}", self.timeframe).replace("{columns}", ", ".join(FEATURE_COLUMNS))
        return text


# the lateness a feature file's `final` column is computed with (exporter.DEFAULT_LATENESS)
EXPORT_LATENESS_SQL = "interval '10 seconds'"


def finality_sql(symbols: str, lateness: str, view: str = "features_{tf}") -> str:
    """finality.sql with its placeholders filled by fixed SQL fragments (never user input)."""
    return (
        _sql_text("finality.sql")
        .replace("{view}", view)
        .replace("{symbols}", symbols)
        .replace("{lateness}", lateness)
    )


RAW_TYPES = (
    ExportType(
        "aggtrades",
        "aggtrades.sql",
        ("agg_trades",),
        fixed_columns=(
            ("timestamp", "timestamptz"),
            ("trade_id", "int8"),
            ("price", "float8"),
            ("quantity", "float8"),
            ("is_buyer_maker", "bool"),
            ("first_trade_id", "int8"),
            ("last_trade_id", "int8"),
        ),
    ),
    ExportType("book_depth", "book_depth.sql", ("book_snapshots",)),
    ExportType("mark_price", "mark_price.sql", ("mark_prices",)),
    ExportType("funding", "funding.sql", ("funding_rates",)),
    ExportType("open_interest", "open_interest.sql", ("open_interest",)),
    ExportType("liquidations", "liquidations.sql", ("liquidations",)),
    ExportType("book_depth_bands", "book_depth_bands.sql", ("book_depth_bands",)),
    ExportType("metrics", "metrics.sql", ("futures_metrics",)),
    ExportType("klines", "klines.sql", ("price_klines",)),
)
# A feature bar reads the raw tables of the stages and settled funding; a changed feature layer
# (features_sql/layer.py) changes every feature file of the logged spans.
FEATURE_SOURCES = (*RAW_TABLES, "funding_rates", "symbol_settings", LAYER_TABLE)
FEATURE_TYPES = tuple(
    ExportType(view_name(tf), "features.sql", FEATURE_SOURCES, timeframe=tf) for tf in TIMEFRAMES
)
TYPES: dict[str, ExportType] = {t.name: t for t in (*RAW_TYPES, *FEATURE_TYPES)}
DEFAULT_TYPES = tuple(TYPES)  # every type: the archive-only ones (bands, metrics, klines) too
# where each type's symbols and time span come from: (table, time column), several for the features
SPAN_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "aggtrades": (("agg_trades", "ts"),),
    "book_depth": (("book_snapshots", "ts"),),
    "mark_price": (("mark_prices", "ts"),),
    "funding": (("funding_rates", "funding_ts"),),
    "open_interest": (("open_interest", "ts"),),
    "liquidations": (("liquidations", "ts"),),
    "book_depth_bands": (("book_depth_bands", "ts"),),
    "metrics": (("futures_metrics", "ts"),),
    "klines": (("price_klines", "ts"),),
    **{
        t.name: tuple(
            (f"{g}_{t.timeframe}", "bucket")
            for g in ("trades", "book", "market", "market_klines", "open_interest", "liquidations")
        )
        for t in FEATURE_TYPES
    },
}


@cache
def _sql_text(name: str) -> str:
    return resources.files("microstructure.export").joinpath("sql", name).read_text()
