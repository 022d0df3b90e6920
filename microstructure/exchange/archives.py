"""data.binance.vision-style bulk archives: CSV in a .zip with a sibling .zip.CHECKSUM.

Paths: data/futures/um/{daily|monthly}/<type>/<SYMBOL>/<SYMBOL>-<type>-<YYYY-MM-DD|YYYY-MM>.zip
CSV columns are Binance's; a header line is written only for periods starting on or after 2022-08-11
(as Binance's files do). FormatConfig serves the variants real files show: microsecond times,
headers always or never, True/False, a trailing is_best_match column, spot-format files at USD-M
paths, the 2026 bookDepth bands, empty metrics fields, 16-decimal values. Zips are built with pyarrow's CSV writer from numpy columns, deflated once
and cached on disk, keyed by everything the data depends on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from microstructure.exchange import healable
from microstructure.exchange.book import depth_within
from microstructure.exchange.config import DAY_MS, FormatConfig
from microstructure.exchange.market import MINUTE_MS, SymbolMarket, Trades, uniform_hash

log = logging.getLogger(__name__)

HEADER_FROM = date(2022, 8, 11)
DAILY_TYPES = (
    "aggTrades",
    "bookDepth",
    "metrics",
    "markPriceKlines",
    "indexPriceKlines",
    "premiumIndexKlines",
)
MONTHLY_TYPES = ("aggTrades", "fundingRate", "markPriceKlines", "indexPriceKlines", "premiumIndexKlines")
KLINE_TYPES = ("markPriceKlines", "indexPriceKlines", "premiumIndexKlines")

COLUMNS = {
    "aggTrades": "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
    "bookDepth": "timestamp,percentage,depth,notional",
    "metrics": "create_time,symbol,sum_open_interest,sum_open_interest_value,"
    "count_toptrader_long_short_ratio,sum_toptrader_long_short_ratio,count_long_short_ratio,"
    "sum_taker_long_short_vol_ratio",
    "klines": "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore",
    "fundingRate": "calc_time,funding_interval_hours,last_funding_rate",
}

PATH_RE = re.compile(
    r"^data/futures/um/(?P<period>daily|monthly)/(?P<kind>[A-Za-z]+)/(?P<symbol>[A-Z0-9]+)/"
    r"(?P=symbol)-(?P=kind)-(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.zip(?P<checksum>\.CHECKSUM)?$"
)
KLINE_SUFFIX = re.compile(r"^(?P<symbol>[A-Z0-9]+)-1m-(?P<date>.+)$")


@dataclass(frozen=True)
class ArchiveRef:
    period: str  # daily | monthly
    kind: str
    symbol: str
    date: str  # YYYY-MM-DD or YYYY-MM

    @property
    def filename(self) -> str:
        if self.kind in KLINE_TYPES:
            return f"{self.symbol}-1m-{self.date}.zip"
        return f"{self.symbol}-{self.kind}-{self.date}.zip"

    @property
    def path(self) -> str:
        if self.kind in KLINE_TYPES:
            return f"data/futures/um/{self.period}/{self.kind}/{self.symbol}/1m/{self.filename}"
        return f"data/futures/um/{self.period}/{self.kind}/{self.symbol}/{self.filename}"

    def bounds(self) -> tuple[int, int]:
        """[start, end) in ms of the period."""
        if self.period == "daily":
            d = date.fromisoformat(self.date)
            t0 = day_ms(d)
            return t0, t0 + DAY_MS
        y, m = (int(x) for x in self.date.split("-"))
        t0 = day_ms(date(y, m, 1))
        t1 = day_ms(date(y + (m == 12), m % 12 + 1, 1))
        return t0, t1


def parse_path(path: str) -> tuple[ArchiveRef, bool] | None:
    """(archive, is_checksum) for an archive path, else None."""
    path = path.lstrip("/")
    m = re.match(
        r"^data/futures/um/(?P<period>daily|monthly)/(?P<kind>[A-Za-z]+)/(?P<symbol>[A-Z0-9]+)/"
        r"(?:1m/)?(?P<file>[^/]+?)\.zip(?P<checksum>\.CHECKSUM)?$",
        path,
    )
    if not m:
        return None
    period, kind, symbol, file = m["period"], m["kind"], m["symbol"], m["file"]
    km = KLINE_SUFFIX.match(file)
    if kind in KLINE_TYPES and km and km["symbol"] == symbol and f"/{symbol}/1m/" in path:
        dstr = km["date"]  # Binance's real layout: .../<SYMBOL>/1m/<SYMBOL>-1m-<date>.zip
    else:
        if kind not in KLINE_TYPES and f"/{symbol}/1m/" in path:
            return None
        prefix = f"{symbol}-{kind}-"
        if not file.startswith(prefix):
            return None
        dstr = file[len(prefix) :]
    pattern = r"^\d{4}-\d{2}-\d{2}$" if period == "daily" else r"^\d{4}-\d{2}$"
    if not re.match(pattern, dstr):
        return None
    try:
        if period == "daily":
            date.fromisoformat(dstr)
        else:
            date.fromisoformat(dstr + "-01")
    except ValueError:
        return None
    return ArchiveRef(period, kind, symbol, dstr), bool(m["checksum"])


def day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def ms_date(t: int) -> date:
    return datetime.fromtimestamp(t / 1000, tz=UTC).date()


def decimal_array(units: np.ndarray, scale: int) -> pa.Array:
    """Integers in units of 10**-scale as a decimal column (written as fixed-point text)."""
    u = np.ascontiguousarray(units, dtype=np.int64)
    buf = np.empty((len(u), 2), dtype=np.int64)
    buf[:, 0] = u
    buf[:, 1] = u >> 63
    return pa.Array.from_buffers(pa.decimal128(38, scale), len(u), [None, pa.py_buffer(buf)])


def float_decimal(values: np.ndarray, scale: int = 8) -> pa.Array:
    return decimal_array(np.round(np.asarray(values, dtype=np.float64) * 10**scale).astype(np.int64), scale)


def datetime_text(t_ms: np.ndarray) -> pa.Array:
    return pa.array((np.asarray(t_ms, dtype=np.int64) // 1000).astype("datetime64[s]"))


def csv_bytes(table: pa.Table, header: str | None) -> bytes:
    out = io.BytesIO()
    if header:
        out.write(header.encode() + b"\n")
    if table.num_rows:
        pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return out.getvalue()


def _times(t_ms: np.ndarray, unit: str, seed: int) -> np.ndarray:
    """Epoch times as the archive writes them: ms, or µs with sub-millisecond digits (floor gives ms)."""
    t = np.asarray(t_ms, dtype=np.int64)
    if unit == "ms":
        return t
    return t * 1000 + (uniform_hash(t, seed, 91) * 1000).astype(np.int64)


def _booleans(values: np.ndarray, style: str) -> pa.Array:
    if style == "lower":
        return pa.array(np.asarray(values, dtype=bool))
    return pa.array(np.where(values, "True", "False"))


def agg_trades_table(
    tr: Trades,
    price_dec: int,
    qty_dec: int,
    *,
    time_unit: str = "ms",
    booleans: str = "lower",
    extra_column: bool = False,
    seed: int = 0,
) -> pa.Table:
    cols = {
        "agg_trade_id": tr.a,
        "price": decimal_array(tr.price, price_dec),
        "quantity": decimal_array(tr.qty, qty_dec),
        "first_trade_id": tr.first,
        "last_trade_id": tr.last,
        "transact_time": _times(tr.T, time_unit, seed),
        "is_buyer_maker": _booleans(tr.maker, booleans),
    }
    if extra_column:  # is_best_match: true for every aggregate trade, as spot's files say
        cols["is_best_match"] = _booleans(np.ones(len(tr.a), dtype=bool), booleans)
    return pa.table(cols)


def kline_table(
    t: np.ndarray, v: np.ndarray, t0: int, t1: int, scale: int, time_unit: str = "ms", seed: int = 0
) -> pa.Table:
    """1m OHLC from per-second values (volume fields are 0 for price-index klines)."""
    minutes = np.arange(t0, t1, MINUTE_MS, dtype=np.int64)
    idx = np.searchsorted(t, minutes)
    has = np.diff(np.append(idx, len(t))) > 0
    minutes, idx = minutes[has], idx[has]
    if len(idx) == 0:
        z = np.zeros(0)
        o = h = lo = c = z
    else:
        o = v[idx]
        h = np.maximum.reduceat(v, idx)
        lo = np.minimum.reduceat(v, idx)
        c = v[np.append(idx[1:], len(v)) - 1]
    n = len(minutes)
    zero = np.zeros(n, np.int64)
    close = minutes + MINUTE_MS - 1
    return pa.table(
        {
            "open_time": minutes if time_unit == "ms" else minutes * 1000,
            "open": float_decimal(o, scale),
            "high": float_decimal(h, scale),
            "low": float_decimal(lo, scale),
            "close": float_decimal(c, scale),
            "volume": zero,
            "close_time": close if time_unit == "ms" else close * 1000 + 999,
            "quote_volume": zero,
            "count": np.full(n, 60, dtype=np.int64),
            "taker_buy_volume": zero,
            "taker_buy_quote_volume": zero,
            "ignore": np.zeros(n, dtype=np.int64),
        }
    )


def fixed_text(values: np.ndarray, decimals: int) -> pa.Array:
    """Values as fixed-point text with `decimals` digits (8: exact decimal columns, as Binance's)."""
    if decimals == 8:
        return float_decimal(values, 8)
    return pa.array([f"{x:.{decimals}f}" for x in np.asarray(values, dtype=np.float64).tolist()])


def _with_empty(col: pa.Array, empty: np.ndarray) -> pa.Array:
    """The column as text with '' where `empty` (the CSV writer leaves a null field empty)."""
    text = col.cast(pa.string()) if not pa.types.is_string(col.type) else col
    return pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), text)


BANDS_10 = np.array([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5], dtype=np.float64)
BANDS_12 = np.array([-5, -4, -3, -2, -1, -0.2, 0.2, 1, 2, 3, 4, 5], dtype=np.float64)


def build_csv(
    market: SymbolMarket,
    ref: ArchiveRef,
    disorder: bool = False,
    formats: FormatConfig | None = None,
    revision: int = 0,
) -> bytes:
    """The CSV text of one archive (the market must already cover the period), in `formats`' variants;
    `revision` > 0: as re-uploaded that many times (healable.py: one row changed each time)."""
    fmt = formats or FormatConfig()
    t0, t1 = ref.bounds()
    t0 = max(t0, market.origin_ms)
    start = date.fromisoformat(ref.date if ref.period == "daily" else ref.date + "-01")
    kind = ref.kind
    spec = market.spec
    header_cols = COLUMNS["klines"] if kind in KLINE_TYPES else COLUMNS[kind]
    if fmt.archive_headers == "auto":
        header = header_cols if start >= HEADER_FROM else None
    else:
        header = header_cols if fmt.archive_headers == "always" else None
    if kind == "aggTrades":
        tr = healable.reupload_trades(market.trades_between(t0, t1), market.seed, revision)
        if disorder and len(tr):
            tr = _disorder(tr, seed=market.seed)
        if ref.period == "daily" and ref.date in fmt.spot_archive_days:
            # Binance's spot layout: no header, is_best_match, True/False, microsecond times
            table = agg_trades_table(
                tr, spec.price_decimals, spec.qty_decimals, time_unit="us", booleans="title",
                extra_column=True, seed=market.seed,
            )  # fmt: skip
            return csv_bytes(table, None)
        table = agg_trades_table(
            tr, spec.price_decimals, spec.qty_decimals, time_unit=fmt.archive_time_unit,
            booleans=fmt.archive_booleans, extra_column=fmt.archive_extra_column, seed=market.seed,
        )  # fmt: skip
        if header and fmt.archive_extra_column:
            header += ",is_best_match"
        return csv_bytes(table, header)
    if kind in KLINE_TYPES:
        name = {"markPriceKlines": "mark", "indexPriceKlines": "index", "premiumIndexKlines": "premium"}[kind]
        t, v = market.series(t0, t1, name)
        return csv_bytes(kline_table(t, v, t0, t1, 8, fmt.archive_time_unit, market.seed), header)
    if kind == "fundingRate":
        ft, fr, _ = market.fundings(t0, t1 + 1)
        sel = ft < t1
        table = pa.table(
            {
                "calc_time": _times(ft[sel], fmt.archive_time_unit, market.seed),
                "funding_interval_hours": np.full(int(sel.sum()), 8, dtype=np.int64),
                "last_funding_rate": float_decimal(fr[sel], 8),
            }
        )
        return csv_bytes(table, header)
    if kind == "bookDepth":
        n_snap = (t1 - t0) // 30_000
        base = t0 + 30_000 * np.arange(n_snap, dtype=np.int64)
        jitter = (uniform_hash(base, market.seed, 77) * 3000).astype(np.int64) + 5000
        ts = base + jitter
        pcts = BANDS_12 if fmt.book_depth_bands == 12 else BANDS_10
        T = np.repeat(ts, len(pcts))
        P = np.tile(pcts, n_snap)
        depth, notional = depth_within(market, T, P)
        depth = healable.reupload_values(depth, market.seed, revision)
        if fmt.book_depth_bands == 12:
            percentage = pa.array([f"{p:.2f}" for p in P.tolist()])  # 2026: "-5.00" ... "-0.20", "0.20"
        else:
            percentage = pa.array(P.astype(np.int64))
        table = pa.table(
            {
                "timestamp": datetime_text(T),
                "percentage": percentage,
                "depth": fixed_text(depth, fmt.archive_decimals),
                "notional": fixed_text(notional, fmt.archive_decimals),
            }
        )
        return csv_bytes(table, header)
    if kind == "metrics":
        times = np.arange(t0, t1, 5 * MINUTE_MS, dtype=np.int64)
        oi_t, oi_v = market.oi_series(t0, t1)
        oi = (
            oi_v[np.clip(np.searchsorted(oi_t, times), 0, max(len(oi_v) - 1, 0))]
            if len(oi_v)
            else times * 0.0
        )
        oi = healable.reupload_values(oi, market.seed, revision)
        mt, mv = market.series(t0, t1, "mark")
        mark = mv[np.clip(np.searchsorted(mt, times), 0, max(len(mv) - 1, 0))] if len(mv) else times * 0.0
        tr = market.trades_between(t0, t1)
        bucket = (tr.T - t0) // (5 * MINUTE_MS)
        nb = len(times)
        buy = np.bincount(bucket[~tr.maker], weights=tr.qty[~tr.maker], minlength=nb)[:nb]
        sell = np.bincount(bucket[tr.maker], weights=tr.qty[tr.maker], minlength=nb)[:nb]
        taker_ratio = np.where(sell > 0, buy / np.maximum(sell, 1), 1.0)
        u1 = uniform_hash(times, market.seed, 11)
        u2 = uniform_hash(times, market.seed, 12)
        u3 = uniform_hash(times, market.seed, 13)
        d = fmt.archive_decimals
        cols = {
            "create_time": datetime_text(times),
            "symbol": pa.array([market.symbol] * nb),
            "sum_open_interest": fixed_text(oi, d),
            "sum_open_interest_value": fixed_text(oi * mark, d),
            "count_toptrader_long_short_ratio": fixed_text(0.8 + 1.2 * u1, d),
            "sum_toptrader_long_short_ratio": fixed_text(0.8 + 1.0 * u2, d),
            "count_long_short_ratio": fixed_text(0.7 + 1.5 * u3, d),
            "sum_taker_long_short_vol_ratio": fixed_text(taker_ratio, d),
        }
        if fmt.metrics_empty > 0:
            u = uniform_hash(times, market.seed, 14)
            ratios_empty = u < fmt.metrics_empty
            oi_empty = u < fmt.metrics_empty / 2
            for c in list(cols)[4:]:
                cols[c] = _with_empty(cols[c], ratios_empty)
            for c in ("sum_open_interest", "sum_open_interest_value"):
                cols[c] = _with_empty(cols[c], oi_empty)
        return csv_bytes(pa.table(cols), header)
    raise KeyError(kind)


def _disorder(tr: Trades, seed: int) -> Trades:
    """Out of order, with about 0.5 % duplicated rows (Binance's monthly files can be like that)."""
    rng = np.random.default_rng([seed, 4242])
    n = len(tr)
    idx = np.concatenate([np.arange(n), rng.choice(n, size=max(1, n // 200), replace=True)])
    # shuffle blocks of rows so most of the file stays locally ordered
    block = rng.permutation((idx.size + 999) // 1000)
    order = np.argsort(np.repeat(block, 1000)[: idx.size], kind="stable")
    idx = idx[order]
    return Trades(*(getattr(tr, f)[idx] for f in Trades.FIELDS))


def zip_bytes(csv: bytes, csv_name: str, when: date) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        info = zipfile.ZipInfo(csv_name, date_time=(when.year, when.month, when.day, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, csv, compresslevel=1)
    return out.getvalue()


def checksum_text(data: bytes, filename: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}  {filename}\n"


class ArchiveStore:
    """Builds archives on demand and caches them (on disk when the key is stable, else in memory)."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir
        self._memory: dict[str, bytes] = {}

    def get(self, key: str, ref: ArchiveRef, build: callable, revision: int = 0) -> bytes:  # type: ignore[valid-type]
        name = f"{key}/{ref.path}" + (f".r{revision}" if revision else "")
        if name in self._memory:
            return self._memory[name]
        path = self.cache_dir / name if self.cache_dir and key else None
        if path is not None and path.exists():
            try:
                return path.read_bytes()
            except OSError:
                pass
        csv = build()
        when = date.fromisoformat(ref.date if ref.period == "daily" else ref.date + "-01")
        data = zip_bytes(csv, ref.filename.removesuffix(".zip") + ".csv", when)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
            except OSError as exc:
                log.warning("archive cache write failed: %s", exc)
                self._remember(name, data)
        else:
            self._remember(name, data)
        return data

    def _remember(self, name: str, data: bytes) -> None:
        if len(self._memory) > 64:
            self._memory.pop(next(iter(self._memory)))
        self._memory[name] = data


def no_such_key(path: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
        f"<Key>{path}</Key><RequestId>LOCALEXCHANGE</RequestId><HostId>local</HostId></Error>"
    )
