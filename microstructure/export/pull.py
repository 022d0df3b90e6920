"""The feature pull for walk-forward training: bars of features_<tf> (from the database or from the
exported Parquet tree) as one pandas DataFrame, point in time, with technical indicators, and
walk-forward folds with an embargo.

Point in time: a bar is final once `bucket_end + lateness` has passed; by default only final bars
are returned. Every value of a bar uses rows of that bar and earlier ones only (the feature SQL and
TA-Lib are causal), and the bar carries `available_at` = its end: a model may use a row at or after
its `available_at`. Indicators warm up on WARMUP_BARS bars read before `start` (the frame's
`attrs["warmup_bars"]` says how many there were), so the first returned bar is already warm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from microstructure.export.exporter import DEFAULT_LATENESS, query_arrow
from microstructure.export.indicators import INDICATOR_COLUMNS, WARMUP_BARS, indicators
from microstructure.export.types import TYPES
from microstructure.features_sql.stages import (
    BOOL_COLUMNS,
    COUNT_COLUMNS,
    FEATURE_COLUMNS,
    TIMEFRAME_SECONDS,
    TIMEFRAMES,
    view_name,
)

log = logging.getLogger(__name__)

SOURCES = ("db", "parquet")
QUALITIES = ("any", "complete")
DEFAULT_MIN_BOOK_COVERAGE = 0.9


class PullError(ValueError):
    """A pull that cannot be answered as asked (unknown timeframe or source, inverted range, ...)."""


def _utc(t: datetime | str) -> datetime:
    t = pd.Timestamp(t).to_pydatetime()
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _from_db(dsn: str, symbols: Sequence[str], lo: datetime, hi: datetime, tf: str) -> pa.Table:
    return query_arrow(
        dsn,
        f"SELECT symbol, bucket, bucket_end, {', '.join(FEATURE_COLUMNS)} FROM {view_name(tf)} "
        "WHERE symbol = ANY($1) AND bucket >= $2 AND bucket < $3 ORDER BY symbol, bucket",
        (list(symbols), lo, hi),
    )


def _from_parquet(data_dir: Path, symbols: Sequence[str], lo: datetime, hi: datetime, tf: str) -> pa.Table:
    root = Path(data_dir) / TYPES[view_name(tf)].name
    parts = []
    for s in symbols:
        folder = root / s
        if not folder.is_dir():
            continue
        d = ds.dataset(folder, format="parquet", partitioning=None, exclude_invalid_files=False)
        lo_ms, hi_ms = int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)
        flt = (pc.field("timestamp") >= lo_ms) & (pc.field("timestamp") < hi_ms)
        parts.append(d.to_table(filter=flt))
    if not parts:
        return pa.table({})
    t = pa.concat_tables(parts)
    to_ts = lambda c: pc.cast(pc.multiply(c, pa.scalar(1000, pa.int64())), pa.timestamp("us", tz="UTC"))  # noqa: E731
    cols = {
        "symbol": t.column("symbol"),
        "bucket": to_ts(t.column("timestamp")),
        "bucket_end": to_ts(t.column("bucket_end")),
    }
    for c in FEATURE_COLUMNS:
        cols[c] = t.column(c)
    return pa.table(cols).sort_by([("symbol", "ascending"), ("bucket", "ascending")])


def pull_features(
    symbols: Sequence[str] | str,
    start: datetime | str,
    end: datetime | str,
    timeframe: str = "1m",
    *,
    source: str = "db",
    technical: bool = True,
    final_only: bool = True,
    dsn: str | None = None,
    data_dir: Path | str | None = None,
    lateness: float = DEFAULT_LATENESS,
    now: datetime | None = None,
    warmup_bars: int = WARMUP_BARS,
    quality: str = "any",
    min_book_coverage: float = DEFAULT_MIN_BOOK_COVERAGE,
) -> pd.DataFrame:
    """Bars of `timeframe` with bucket in [start, end) for `symbols`, indexed by (symbol, bucket):
    every FEATURES.md column, `available_at`, and (with `technical`) INDICATOR_COLUMNS.

    source 'db' reads the features_<tf> view (`dsn`); 'parquet' the exported tree under `data_dir`
    (its features_<tf>/<SYMBOL>/... files). Both give equal frames for the same bars.

    quality 'complete' drops the bars whose trades are not complete (`trades_complete`) or whose
    `book_coverage` is under `min_book_coverage` (after the indicators, which see every bar);
    `attrs["quality_dropped"]` says how many bars were dropped (0 with 'any').
    """
    syms = [symbols] if isinstance(symbols, str) else list(symbols)
    if not syms:
        raise PullError("symbols: expected at least one")
    if timeframe not in TIMEFRAMES:
        raise PullError(f"timeframe: expected one of {', '.join(TIMEFRAMES)}, got {timeframe!r}")
    if source not in SOURCES:
        raise PullError(f"source: expected db or parquet, got {source!r}")
    _check_quality(quality, min_book_coverage)
    lo, hi = _utc(start), _utc(end)
    if hi <= lo:
        raise PullError(f"end {hi.isoformat()} is not after start {lo.isoformat()}")
    width = timedelta(seconds=TIMEFRAME_SECONDS[timeframe])
    read_from = lo - warmup_bars * width if technical else lo
    if source == "db":
        if dsn is None:
            raise PullError("source 'db' needs a dsn")
        table = _from_db(dsn, syms, read_from, hi, timeframe)
    else:
        if data_dir is None:
            raise PullError("source 'parquet' needs data_dir (the export's --output-dir)")
        table = _from_parquet(Path(data_dir), syms, read_from, hi, timeframe)
    df = _frame(table)
    now = now or datetime.now(tz=UTC)
    if final_only and len(df):
        df = df[df["bucket_end"] + pd.Timedelta(seconds=lateness) <= pd.Timestamp(now)]
    df["available_at"] = df["bucket_end"]
    if technical:
        parts = [
            indicators(g.droplevel("symbol")).set_index(g.index)
            for _, g in df.groupby(level="symbol", sort=False)
        ]
        ind = pd.concat(parts) if parts else pd.DataFrame(columns=list(INDICATOR_COLUMNS), dtype="float64")
        df = df.join(ind)
    warm = df.index.get_level_values("bucket") < pd.Timestamp(lo) if len(df) else np.zeros(0, bool)
    out = _keep_quality(df[~warm], quality, min_book_coverage)
    out.attrs["warmup_bars"] = warmup_bars if technical else 0
    read = (
        pd.Series(warm, index=df.index.get_level_values("symbol")).groupby(level=0).sum() if len(df) else {}
    )
    out.attrs["warmup_bars_read"] = {
        str(k): int(v) for k, v in dict(read).items()
    }  # per symbol, before start
    out.attrs["timeframe"] = timeframe
    out.attrs["lateness_s"] = lateness
    return out


def _check_quality(quality: str, min_book_coverage: float) -> None:
    if quality not in QUALITIES:
        raise PullError(f"quality: expected any or complete, got {quality!r}")
    if not 0.0 <= min_book_coverage <= 1.0:
        raise PullError(f"min_book_coverage: expected a share between 0 and 1, got {min_book_coverage!r}")


def _keep_quality(df: pd.DataFrame, quality: str, min_book_coverage: float) -> pd.DataFrame:
    """The bars `quality` keeps (docs/FEATURES.md "Quality"); attrs quality / quality_dropped say what."""
    keep = np.ones(len(df), bool)
    if quality == "complete" and len(df):
        trades_ok = df["trades_complete"].fillna(False).astype(bool).to_numpy()
        book_ok = df["book_coverage"].fillna(0.0).to_numpy(float) >= min_book_coverage
        keep = trades_ok & book_ok
    out = df[keep]
    dropped = int((~keep).sum())
    if quality == "complete":
        log.info(
            "pull: quality complete dropped %d of %d bars (trades incomplete or book coverage < %g)",
            dropped, len(df), min_book_coverage,
        )  # fmt: skip
    out.attrs["quality"] = quality
    out.attrs["min_book_coverage"] = min_book_coverage
    out.attrs["quality_dropped"] = dropped
    return out


def _frame(table: pa.Table) -> pd.DataFrame:
    if table.num_columns == 0 or table.num_rows == 0:
        idx = pd.MultiIndex.from_arrays([[], pd.DatetimeIndex([], tz="UTC")], names=["symbol", "bucket"])
        df = pd.DataFrame(index=idx, columns=["bucket_end", *FEATURE_COLUMNS])
        df["bucket_end"] = pd.to_datetime(df["bucket_end"], utc=True)
        return df
    plain = pa.Table.from_arrays(
        table.columns,
        schema=pa.schema([pa.field(f.name, f.type) for f in table.schema]),  # drop driver metadata
    )
    df = plain.to_pandas()
    for c in ("bucket", "bucket_end"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    for c in FEATURE_COLUMNS:
        if c in COUNT_COLUMNS:
            df[c] = df[c].astype("Int64")
        elif c in BOOL_COLUMNS:
            df[c] = df[c].astype("boolean")
        else:
            df[c] = df[c].astype("float64")
    return df.set_index(["symbol", "bucket"])


# ---------------------------------------------------------------- walk-forward


@dataclass(frozen=True)
class Fold:
    """Positions (into the index given) of a fold's training and test bars, and their time ranges."""

    train: np.ndarray
    test: np.ndarray
    train_range: tuple[pd.Timestamp, pd.Timestamp]  # [start, end)
    test_range: tuple[pd.Timestamp, pd.Timestamp]


def walk_forward_folds(
    index: pd.Index | pd.DataFrame, *, train: Any, test: Any, step: Any | None = None, embargo: Any = "0s",
    horizon: Any = "0s",
) -> Iterator[Fold]:  # fmt: skip
    """Rolling walk-forward folds over the bars of `index` (a DatetimeIndex, or a (symbol, bucket)
    MultiIndex / frame): train on [t, t + train), test on [t + train + embargo, ... + test), then move
    on by `step` (default: `test`). Durations are pandas Timedelta strings or timedeltas.

    The embargo keeps the labels of the last training bars out of the test range: a training bar at
    b predicts up to b + horizon, so `embargo` must be at least the label horizon; a `horizon` given
    here also drops training bars whose horizon reaches into the test range."""
    if isinstance(index, pd.DataFrame):
        index = index.index
    times = index.get_level_values("bucket") if isinstance(index, pd.MultiIndex) else pd.DatetimeIndex(index)
    tr, te = pd.Timedelta(train), pd.Timedelta(test)
    st = pd.Timedelta(step) if step is not None else te
    emb, hor = pd.Timedelta(embargo), pd.Timedelta(horizon)
    if tr <= pd.Timedelta(0) or te <= pd.Timedelta(0) or st <= pd.Timedelta(0) or emb < pd.Timedelta(0):
        raise PullError("walk_forward_folds: train, test and step must be positive, embargo >= 0")
    if hor > emb:
        raise PullError(f"walk_forward_folds: embargo {emb} is shorter than the label horizon {hor}")
    if len(times) == 0:
        return
    values = pd.DatetimeIndex(times).as_unit("ns").asi8  # ns since the epoch, UTC
    t = pd.Timestamp(times.min())
    last = pd.Timestamp(times.max())
    while t + tr + emb < last:
        test_lo, test_hi = t + tr + emb, t + tr + emb + te
        train_mask = (values >= t.value) & (values < (t + tr).value) & (values + hor.value < test_lo.value)
        test_mask = (values >= test_lo.value) & (values < test_hi.value)
        if test_mask.any() and train_mask.any():
            yield Fold(np.flatnonzero(train_mask), np.flatnonzero(test_mask), (t, t + tr), (test_lo, test_hi))
        t += st
