"""The feature pull for walk-forward training: bars of features_<tf> (from the database or from the
exported Parquet tree) as one pandas DataFrame, point in time, with technical indicators, labels and
walk-forward folds with an embargo taken from the label's horizon.

Point in time (docs/FEATURES.md, "Point in time"): a bar is final when its data are: every stream
that fed it was live past its end plus the lateness (export/sql/finality.sql says exactly how that
is read from the stored rows); a bar the collection stopped inside is never final. The frame's
`final` column says so, `available_at` is when the bar became final (its end plus the lateness;
NaT for a bar that is not final), and by default only final bars available by `now` are returned.
Every value of a bar uses rows of that bar and earlier ones only.

Indicators do not depend on `start`: they are computed on fixed anchor windows (indicators.py), read
from before `start` as far as needed. A pull that has fewer than WARMUP_BARS bars before `start`
for a symbol warns (WarmupWarning) and says so in `attrs` (or raises WarmupError with
`strict_warmup=True`).

The database: `dsn=None` finds it as the CLI does (MICROSTRUCTURE_DATABASE_URL, else the embedded
server under MICROSTRUCTURE_HOME, started if needed): db.connect.default_database_url.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from microstructure.export.exporter import DEFAULT_LATENESS, query_arrow
from microstructure.export.indicators import (
    INDICATOR_COLUMNS,
    WARMUP_BARS,
    WARMUP_NEEDED,
    anchored_indicators,
    window_start,
)
from microstructure.export.types import TYPES, finality_sql
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


class WarmupError(PullError):
    """strict_warmup: a symbol has fewer bars before `start` than the indicators need."""


class WarmupWarning(UserWarning):
    """A symbol has fewer bars before `start` than the indicators need: its first values are cold."""


def _utc(t: datetime | str) -> datetime:
    t = pd.Timestamp(t).to_pydatetime()
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _from_db(
    dsn: str, symbols: Sequence[str], lo: datetime, hi: datetime, tf: str, lateness: float
) -> pa.Table:
    fin = finality_sql("$1::text[]", "make_interval(secs => $4::float8)", view_name(tf))
    cols = ", ".join(f"f.{c}" for c in FEATURE_COLUMNS)
    return query_arrow(
        dsn,
        f"SELECT f.symbol, f.bucket, f.bucket_end, {cols}, fin.final FROM {view_name(tf)} f "
        f"JOIN ({fin}) fin ON fin.symbol = f.symbol AND fin.bucket = f.bucket "
        "WHERE f.symbol = ANY($1::text[]) AND f.bucket >= $2 AND f.bucket < $3 ORDER BY f.symbol, f.bucket",
        (list(symbols), lo, hi, float(lateness)),
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
    if "final" in t.column_names:
        cols["final"] = t.column("final")
    else:  # files written before the column existed: nothing in them is known final
        warnings.warn(f"{root}: feature files without a `final` column: re-export them", stacklevel=3)
        cols["final"] = pa.array([False] * t.num_rows, pa.bool_())
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
    quality: str = "any",
    min_book_coverage: float = DEFAULT_MIN_BOOK_COVERAGE,
    strict_warmup: bool = False,
    grid: bool = False,
    wide: bool = False,
) -> pd.DataFrame:
    """Bars of `timeframe` with bucket in [start, end) for `symbols`, indexed by (symbol, bucket):
    every docs/FEATURES.md column, `final`, `available_at`, and (with `technical`) INDICATOR_COLUMNS.

    source 'db' reads the features_<tf> view; `dsn=None` finds the database as the CLI does
    (MICROSTRUCTURE_DATABASE_URL, else the embedded server under MICROSTRUCTURE_HOME, started if
    needed). 'parquet' reads the exported tree under `data_dir` (its features_<tf>/<SYMBOL>/...
    files, whose `final` column was computed at export with the default lateness). Both give equal
    frames for the same bars.

    final_only (default): only bars final by their data (finality.sql) whose `available_at`
    (= bucket_end + lateness) is at or before `now` (default: the clock).
    technical: indicators on fixed anchor windows (indicators.py), independent of `start`; a symbol
    with fewer than WARMUP_BARS bars before `start` gives a WarmupWarning (or WarmupError with
    `strict_warmup`), and attrs say what was read: warmup_bars (needed), warmup_bars_read and
    cold_indicators (per symbol: the indicators whose WARMUP_NEEDED exceeds what was read).
    grid: every bucket of [start, end) for every symbol (up to the last bucket available by `now`
    when final_only): a bar without a (final) row is a row with `present` False and NaN values.
    wide: the grid as one row per bucket, columns (symbol, column).

    quality 'complete' drops the bars whose trades are not complete (`trades_complete`) or whose
    `book_coverage` is under `min_book_coverage` (after the indicators, which see every bar; with
    grid they come back as rows with `present` False); `attrs["quality_dropped"]` says how many
    bars were dropped (0 with 'any').
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
    read_from = window_start(pd.Timestamp(lo), timeframe).to_pydatetime() if technical else lo
    if source == "db":
        if dsn is None:
            from microstructure.db.connect import default_database_url

            dsn = default_database_url()
        table = _from_db(dsn, syms, read_from, hi, timeframe, lateness)
    else:
        if data_dir is None:
            raise PullError("source 'parquet' needs data_dir (the export's --output-dir)")
        table = _from_parquet(Path(data_dir), syms, read_from, hi, timeframe)
    df = _frame(table)
    now_ts = pd.Timestamp(now or datetime.now(tz=UTC))
    lat = pd.Timedelta(seconds=lateness)
    df["available_at"] = (df["bucket_end"] + lat).where(df["final"].astype(bool))
    first = pd.Timestamp(lo)
    before = df.index.get_level_values("bucket") < first if len(df) else np.zeros(0, bool)
    read = {s: 0 for s in syms}
    if technical:
        parts = []
        for sym, g in df.groupby(level="symbol", sort=False):
            bars = g.droplevel("symbol")
            read[str(sym)] = int(bars.loc[bars.index < first, "close"].notna().sum())
            ind = anchored_indicators(bars, timeframe, first)
            ind.index = pd.MultiIndex.from_arrays([[sym] * len(ind), ind.index], names=["symbol", "bucket"])
            parts.append(ind)
        ind = pd.concat(parts) if parts else pd.DataFrame(columns=list(INDICATOR_COLUMNS), dtype="float64")
        df = df.join(ind)
    out = df[~before]
    if final_only and len(out):
        out = out[out["final"].astype(bool) & (out["available_at"] <= now_ts)]
    out = _keep_quality(out, quality, min_book_coverage)
    if grid or wide:
        out = _grid(out, syms, first, pd.Timestamp(hi), timeframe, now_ts - lat if final_only else None)
    cold = {s: sorted(k for k, n in WARMUP_NEEDED.items() if n > read[s]) for s in syms} if technical else {}
    out.attrs["warmup_bars"] = WARMUP_BARS if technical else 0
    out.attrs["warmup_bars_read"] = read if technical else {}
    out.attrs["cold_indicators"] = {s: c for s, c in cold.items() if c}
    out.attrs["timeframe"] = timeframe
    out.attrs["lateness_s"] = lateness
    short = {s: n for s, n in read.items() if n < WARMUP_BARS} if technical else {}
    if short:
        msg = warmup_message(short, timeframe)
        if strict_warmup:
            raise WarmupError(msg)
        warnings.warn(msg, WarmupWarning, stacklevel=2)
    if wide:
        return _wide(out)
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


def warmup_message(short: dict[str, int], timeframe: str) -> str:
    """One line: which symbols have too few bars before `start`, how many were read and needed."""
    said = ", ".join(f"{s} {n}" for s, n in short.items())
    return (
        f"indicators not warm: bars read before start ({said}) < {WARMUP_BARS} needed at {timeframe}; "
        "the first values of the slow indicators are cold (attrs['cold_indicators'])"
    )


def _grid(
    df: pd.DataFrame,
    syms: Sequence[str],
    lo: pd.Timestamp,
    hi: pd.Timestamp,
    tf: str,
    until: pd.Timestamp | None,
) -> pd.DataFrame:
    width = pd.Timedelta(seconds=TIMEFRAME_SECONDS[tf])
    first = lo.ceil(width) if lo != lo.floor(width) else lo
    last = hi if until is None else min(hi, until - width + pd.Timedelta(microseconds=1))
    buckets = pd.date_range(first, last, freq=width, inclusive="left").as_unit("us")
    idx = pd.MultiIndex.from_product([list(syms), buckets], names=["symbol", "bucket"])
    present = pd.Series(True, index=df.index).reindex(idx, fill_value=False)
    g = df.reindex(idx)
    g["bucket_end"] = (g.index.get_level_values("bucket") + width).as_unit("us")
    g["final"] = g["final"].astype("boolean").fillna(False).astype(bool)
    g.insert(1, "present", present.to_numpy())
    for c in ("trade_count", "fill_count", "large_trade_count", "snapshot_count"):
        if c in g:
            g[c] = g[c].astype("Int64")
    return g


def _wide(df: pd.DataFrame) -> pd.DataFrame:
    w = df.unstack("symbol")
    w = w.swaplevel(0, 1, axis=1)
    syms = list(dict.fromkeys(df.index.get_level_values("symbol")))
    cols = list(df.columns)
    w = w.reindex(columns=pd.MultiIndex.from_product([syms, cols], names=["symbol", "column"]))
    w.attrs.update(df.attrs)
    return w


def _frame(table: pa.Table) -> pd.DataFrame:
    if table.num_columns == 0 or table.num_rows == 0:
        idx = pd.MultiIndex.from_arrays([[], pd.DatetimeIndex([], tz="UTC")], names=["symbol", "bucket"])
        df = pd.DataFrame(index=idx, columns=["bucket_end", *FEATURE_COLUMNS, "final"])
        df["bucket_end"] = pd.to_datetime(df["bucket_end"], utc=True).astype("datetime64[us, UTC]")
        df["final"] = df["final"].astype(bool)
        return _typed(df)
    plain = pa.Table.from_arrays(
        table.columns,
        schema=pa.schema([pa.field(f.name, f.type) for f in table.schema]),  # drop driver metadata
    )
    df = plain.to_pandas()
    for c in ("bucket", "bucket_end"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    df["final"] = df["final"].fillna(False).astype(bool)
    return _typed(df).set_index(["symbol", "bucket"])


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Feature columns in their pandas dtypes: counts Int64, flags boolean, the rest float64."""
    for c in FEATURE_COLUMNS:
        if c in COUNT_COLUMNS:
            df[c] = df[c].astype("Int64")
        elif c in BOOL_COLUMNS:
            df[c] = df[c].astype("boolean")
        else:
            df[c] = df[c].astype("float64")
    return df


# ---------------------------------------------------------------- walk-forward


@dataclass(frozen=True, repr=False)
class Fold:
    """Positions (into the index given) of a fold's training and test bars, and their time ranges."""

    train: np.ndarray
    test: np.ndarray
    train_range: tuple[pd.Timestamp, pd.Timestamp]  # [start, end)
    test_range: tuple[pd.Timestamp, pd.Timestamp]

    def __repr__(self) -> str:
        def span(r: tuple[pd.Timestamp, pd.Timestamp]) -> str:
            return f"{r[0]:%Y-%m-%d %H:%M} .. {r[1]:%Y-%m-%d %H:%M}"

        return (
            f"Fold(train={len(self.train)} bars [{span(self.train_range)}), "
            f"test={len(self.test)} bars [{span(self.test_range)}))"
        )


def forward_returns(bars: pd.DataFrame, horizon: Any = "15min", column: str = "close") -> pd.Series:
    """The label: close(t + horizon) / close(t) - 1 for each bar t of a grid pull (grid=True, long
    (symbol, bucket) index), per symbol. NaN where the horizon leaves the data (no bar t + horizon
    in the frame) or crosses a missing bar (any bar in (t, t + horizon] not present or without a
    close), and where bar t itself has no close. The label of bar t is known at the end of bar
    t + horizon: `attrs["horizon"]` carries the horizon for walk_forward_folds' embargo."""
    if not isinstance(bars.index, pd.MultiIndex) or "present" not in bars.columns:
        raise PullError("forward_returns: expected a grid pull (pull_features(..., grid=True))")
    width = pd.Timedelta(seconds=TIMEFRAME_SECONDS[bars.attrs.get("timeframe", "1m")])
    hor = pd.Timedelta(horizon)
    if hor <= pd.Timedelta(0) or hor % width:
        raise PullError(f"forward_returns: horizon {hor} is not a positive multiple of the bar width {width}")
    n = int(hor / width)
    parts = []
    for _, g in bars.groupby(level="symbol", sort=False):
        t = g.index.get_level_values("bucket")
        if len(t) > 1 and (np.diff(pd.DatetimeIndex(t).as_unit("ns").asi8) != width.value).any():
            raise PullError("forward_returns: the frame is not a grid (buckets missing): pull with grid=True")
        c = g[column].astype("float64").where(g["present"].astype(bool))
        ok = c.notna().astype(float)
        # every bar of (t, t + n] present with a close: the forward rolling count of those is n
        seen = ok[::-1].rolling(n, min_periods=n).sum()[::-1].shift(-1)
        r = c.shift(-n) / c - 1.0
        parts.append(r.where(seen == n))
    out = pd.concat(parts) if parts else pd.Series(dtype="float64")
    out = out.reindex(bars.index)
    out.name = f"fwd_return_{horizon}"
    out.attrs["horizon"] = hor
    out.attrs["timeframe"] = bars.attrs.get("timeframe", "1m")
    return out


def walk_forward_folds(
    index: pd.Index | pd.DataFrame, *, train: Any, test: Any, step: Any | None = None, embargo: Any | None = None,
    horizon: Any | None = None, label: pd.Series | None = None,
) -> Iterator[Fold]:  # fmt: skip
    """Rolling walk-forward folds over the bars of `index` (a DatetimeIndex, or a (symbol, bucket)
    MultiIndex / frame): train on [t, t + train), test on [t + train + embargo, ... + test), then move
    on by `step` (default: `test`). Durations are pandas Timedelta strings or timedeltas.

    The label's horizon: `horizon`, or `label.attrs["horizon"]` (a forward_returns() Series). A
    training bar b's label uses bars up to b + horizon (known at that bar's end), so training bars
    whose label reaches into the test range are dropped, and the embargo defaults to the horizon (a
    smaller one is refused)."""
    if isinstance(index, pd.DataFrame):
        index = index.index
    times = index.get_level_values("bucket") if isinstance(index, pd.MultiIndex) else pd.DatetimeIndex(index)
    if horizon is None:
        horizon = label.attrs.get("horizon", "0s") if label is not None else "0s"
    hor = pd.Timedelta(horizon)
    emb = pd.Timedelta(embargo) if embargo is not None else hor
    tr, te = pd.Timedelta(train), pd.Timedelta(test)
    st = pd.Timedelta(step) if step is not None else te
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
