"""data.binance.vision bulk archives: download with sha256 verification, stream-unzip, parse the CSV.

Layout: {archive_url}/data/futures/um/{daily|monthly}/{type}/{SYMBOL}/{SYMBOL}-{type}-{YYYY-MM-DD|YYYY-MM}.zip
(kline types live under .../{SYMBOL}/1m/{SYMBOL}-1m-{date}.zip), each with a sibling `.zip.CHECKSUM`
holding "<sha256>  <filename>".

- 404 on the zip or its checksum: the archive is not published (yet): `ArchiveMissing`.
- the sha256 of the zip, computed while it streams to a temporary file, differs from the published
  one: `ChecksumMismatch` (nothing of that archive is returned; the caller refuses that period).
- the CSV is read from the zip member as a stream by pyarrow.csv; whether a header line exists is
  decided by looking at the first line (Binance's files have one only from 2022-08-11; futures
  klines from about 2022-05). Format drift accepted: 13-digit millisecond or 16-digit microsecond
  epoch times (one unit per file, stored as ms), True/False or true/false, extra columns the header
  names (ignored with a note), empty metrics fields (NULL).
- malformed rows (wrong field count, unparsable values, a time in neither unit) are counted and
  logged with their raw text and the reason (which column, what was expected); the other rows are
  kept. A file with no valid row, or with more than MAX_MALFORMED_SHARE of its rows malformed, is
  not to be loaded (`failure()`): the caller fails that period.
- aggTrades tables come out sorted by aggregate id with duplicates removed (monthly files can be out
  of order and hold duplicated rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import random
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from isal import isal_zlib

from microstructure.ingest.records import AGG_TRADES, FUNDING_RATES, OPEN_INTEREST

log = logging.getLogger(__name__)

KLINE_TYPES = ("markPriceKlines", "indexPriceKlines", "premiumIndexKlines", "klines")
CHUNK = 1 << 20
MAX_LOGGED_MALFORMED = 1000  # each malformed row is logged with its text, up to this many per file


class ArchiveError(RuntimeError):
    """An archive could not be fetched or read."""


class ArchiveMissing(ArchiveError):
    """The archive (or its .CHECKSUM) answers 404: not published (yet)."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        super().__init__(f"archive not published: {url}" + (f" ({detail})" if detail else ""))


class ChecksumMismatch(ArchiveError):
    """The downloaded zip does not have the sha256 its .CHECKSUM publishes: the archive is refused."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        self.url, self.expected, self.actual = url, expected, actual
        super().__init__(
            f"checksum mismatch for {url}: published sha256 {expected}, downloaded file has {actual}; "
            "archive refused"
        )


# ---------------------------------------------------------------- paths


def archive_path(kind: str, symbol: str, period: str, when: date | str) -> str:
    """Path below the archive base URL. `when` is a day (daily) or a month (monthly: date or 'YYYY-MM')."""
    if period not in ("daily", "monthly"):
        raise ValueError(f"period: expected daily or monthly, got {period!r}")
    if isinstance(when, date):
        stamp = when.isoformat() if period == "daily" else when.strftime("%Y-%m")
    else:
        stamp = when
    symbol = symbol.upper()
    if kind in KLINE_TYPES:
        return f"data/futures/um/{period}/{kind}/{symbol}/1m/{symbol}-1m-{stamp}.zip"
    return f"data/futures/um/{period}/{kind}/{symbol}/{symbol}-{kind}-{stamp}.zip"


def archive_url(base_url: str, kind: str, symbol: str, period: str, when: date | str) -> str:
    return f"{base_url.rstrip('/')}/{archive_path(kind, symbol, period, when)}"


# ---------------------------------------------------------------- download


@dataclass
class Downloaded:
    url: str
    path: Path
    sha256: str
    size: int
    cached: bool  # True: `path` is in the cache folder and stays; False: a temporary file to delete

    def discard(self) -> None:
        if not self.cached:
            with contextlib.suppress(OSError):
                self.path.unlink()


def parse_checksum(text: str, url: str) -> str:
    """The sha256 of a .CHECKSUM body "<sha256>  <filename>"."""
    m = re.match(r"^\s*([0-9a-fA-F]{64})\b", text)
    if not m:
        raise ArchiveError(f"unreadable checksum file {url}.CHECKSUM: {text[:120]!r}")
    return m.group(1).lower()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


async def _with_retries(what: str, attempts: int, fn: Callable[[], Any]) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except (aiohttp.ClientError, TimeoutError, ConnectionError, _ServerError) as exc:
            if attempt == attempts:
                raise ArchiveError(f"{what}: {exc} (gave up after {attempts} attempts)") from exc
            delay = random.uniform(0, min(20.0, 0.5 * 2**attempt))
            log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class _ServerError(Exception):
    pass


async def fetch_checksum(session: aiohttp.ClientSession, url: str, *, attempts: int = 4) -> str:
    async def get() -> str:
        async with session.get(url + ".CHECKSUM") as resp:
            if resp.status == 404:
                raise ArchiveMissing(url, "no .CHECKSUM")
            if resp.status >= 500:
                raise _ServerError(f"HTTP {resp.status}")
            if resp.status != 200:
                raise ArchiveError(f"GET {url}.CHECKSUM: HTTP {resp.status}")
            return parse_checksum(await resp.text(), url)

    return await _with_retries(f"GET {url}.CHECKSUM", attempts, get)  # type: ignore[no-any-return]


async def download_archive(
    session: aiohttp.ClientSession,
    url: str,
    *,
    cache_dir: Path | None = None,
    tmp_dir: Path | None = None,
    attempts: int = 4,
) -> Downloaded:
    """Download `url` and verify it against `url`.CHECKSUM while it streams to disk.

    With `cache_dir`, the verified zip is renamed atomically to cache_dir/<archive path> and reused by
    later calls (re-verified against the published checksum). Raises ArchiveMissing, ChecksumMismatch.
    """
    expected = await fetch_checksum(session, url, attempts=attempts)
    rel = url.split("/data/", 1)[-1]
    final: Path | None = (cache_dir / "data" / rel) if cache_dir is not None else None
    if final is not None and final.exists():
        actual = await asyncio.to_thread(_sha256_file, final)
        if actual == expected:
            return Downloaded(url, final, expected, final.stat().st_size, cached=True)
        log.warning("cached %s does not match its published checksum; downloading again", final)
        with contextlib.suppress(OSError):
            final.unlink()
    folder = final.parent if final is not None else (tmp_dir or Path(tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)

    async def get() -> Downloaded:
        fd, tmp_name = tempfile.mkstemp(prefix=".dl-", suffix=".zip.part", dir=folder)
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async with session.get(url) as resp:
                    if resp.status == 404:
                        raise ArchiveMissing(url)
                    if resp.status >= 500:
                        raise _ServerError(f"HTTP {resp.status}")
                    if resp.status != 200:
                        raise ArchiveError(f"GET {url}: HTTP {resp.status}")
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            actual = h.hexdigest()
            if actual != expected:
                raise ChecksumMismatch(url, expected, actual)
            if final is not None:
                os.replace(tmp, final)
                return Downloaded(url, final, actual, size, cached=True)
            return Downloaded(url, tmp, actual, size, cached=False)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    return await _with_retries(f"GET {url}", attempts, get)  # type: ignore[no-any-return]


async def archive_size(session: aiohttp.ClientSession, url: str) -> int | None:
    """Content-Length of a published archive (HEAD), None when unknown; raises ArchiveMissing on 404."""
    async with session.head(url, allow_redirects=True) as resp:
        if resp.status == 404:
            raise ArchiveMissing(url)
        if resp.status != 200:
            return None
        return resp.content_length


# ---------------------------------------------------------------- CSV parsing

# Column specs by archive type: (name, type) with type one of
#   int, float, bool, str, datetime ("YYYY-MM-DD HH:MM:SS", kept as epoch ms) and
#   time (an epoch time, 13 digits in milliseconds or 16 digits in microseconds, kept as ms).
CSV_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "aggTrades": (
        ("agg_trade_id", "int"),
        ("price", "float"),
        ("quantity", "float"),
        ("first_trade_id", "int"),
        ("last_trade_id", "int"),
        ("transact_time", "time"),
        ("is_buyer_maker", "bool"),
    ),
    "bookDepth": (
        ("timestamp", "datetime"),
        ("percentage", "float"),
        ("depth", "float"),
        ("notional", "float"),
    ),
    "metrics": (
        ("create_time", "datetime"),
        ("symbol", "str"),
        ("sum_open_interest", "float"),
        ("sum_open_interest_value", "float"),
        ("count_toptrader_long_short_ratio", "float"),
        ("sum_toptrader_long_short_ratio", "float"),
        ("count_long_short_ratio", "float"),
        ("sum_taker_long_short_vol_ratio", "float"),
    ),
    "fundingRate": (("calc_time", "time"), ("funding_interval_hours", "int"), ("last_funding_rate", "float")),
    "klines": (
        ("open_time", "time"),
        ("open", "float"),
        ("high", "float"),
        ("low", "float"),
        ("close", "float"),
        ("volume", "float"),
        ("close_time", "time"),
        ("quote_volume", "float"),
        ("count", "int"),
        ("taker_buy_volume", "float"),
        ("taker_buy_quote_volume", "float"),
        ("ignore", "str"),
    ),
}
for _k in ("markPriceKlines", "indexPriceKlines", "premiumIndexKlines"):
    CSV_COLUMNS[_k] = CSV_COLUMNS["klines"]

# Columns whose empty field ("") is a NULL, not a malformed row: Binance's metrics files leave
# ratios (and sometimes the open interest) empty where it had no value.
NULLABLE_COLUMNS: dict[str, frozenset[str]] = {
    "metrics": frozenset(n for n, t in CSV_COLUMNS["metrics"] if t == "float"),
}

# Columns whose values must lie in a range (inclusive): a bookDepth band is a percentage from mid,
# stored as numeric(5,2).
VALUE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "bookDepth": {"percentage": (-100.0, 100.0)},
}

# A file may hold at most this share of malformed rows; beyond it (or with no valid row at all) the
# file is not trusted and its period fails: what is left of it would be a partial day stored as whole.
MAX_MALFORMED_SHARE = 0.01

# Epoch times by digit count: 13 digits are milliseconds (2001-09-09 .. 2286), 16 digits microseconds
# (Binance's spot archives since 2025). Each file uses one unit, found from its rows.
TIME_UNITS = {"ms": (10**12, 10**13, 1), "us": (10**15, 10**16, 1000)}
TIME_DIGITS = {"ms": 13, "us": 16}

_ARROW_TYPES = {
    "int": pa.int64(),
    "time": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "str": pa.string(),
    "datetime": pa.timestamp("ms"),
}
_VALID = {
    "int": r"^\s*[-+]?\d+\s*$",
    "float": r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$",
    "datetime": r"^\s*\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}\s*$",
}
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "datetime": "a time YYYY-MM-DD HH:MM:SS",
}
TRUE_VALUES = ["true", "True", "TRUE"]
FALSE_VALUES = ["false", "False", "FALSE"]
SPOT_AGG_TRADES = (
    "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match"
)


@dataclass
class ParsedCsv:
    kind: str
    table: pa.Table  # the archive's columns, typed (datetime and time columns as int64 ms)
    header: bool
    malformed: int = 0
    malformed_rows: list[str] = field(default_factory=list)  # raw text (first MAX_LOGGED_MALFORMED)
    malformed_reasons: list[str] = field(default_factory=list)  # why, for each of malformed_rows
    notes: list[str] = field(default_factory=list)  # what was accepted that is not the usual format
    time_unit: str | None = None  # ms | us: the unit of the file's epoch times (None: it has none)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def failure(self, max_share: float = MAX_MALFORMED_SHARE) -> str | None:
        """Why this file must not be loaded (no valid row, or too many malformed ones), else None."""
        return file_failure(self.rows, self.malformed, self.malformed_reasons, max_share)


def file_failure(valid: int, malformed: int, reasons: list[str], max_share: float) -> str | None:
    first = f"; first: {reasons[0]}" if reasons else ""
    if valid == 0:
        return f"no valid row ({malformed:,} malformed{first})"
    total = valid + malformed
    if malformed > max_share * total:
        return (
            f"{malformed:,} of {total:,} rows malformed ({malformed / total:.1%}, more than the "
            f"{max_share:.1%} allowed){first}"
        )
    return None


Source = bytes | bytearray | memoryview | IO[bytes] | Callable[[], IO[bytes]]


def _opener(source: Source) -> Callable[[], IO[bytes]]:
    """A function returning a fresh binary stream over the source each time it is called."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return lambda: io.BytesIO(data)
    if callable(source) and not hasattr(source, "read"):
        return source
    stream: Any = source
    if stream.seekable():
        pos = stream.tell()

        def reopen() -> IO[bytes]:
            stream.seek(pos)
            return _NoClose(stream)  # type: ignore[return-value]

        return reopen
    data = stream.read()
    return lambda: io.BytesIO(data)


class _NoClose(io.RawIOBase):
    """A view of a caller's stream that pyarrow may close without closing the caller's stream."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.inner.read(len(b))
        b[: len(data)] = data
        return len(data)


def _first_line(open_stream: Callable[[], IO[bytes]]) -> bytes:
    with open_stream() as f:
        head = f.read(4096)
    return head.split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf").rstrip(b"\r")


def _header_names(first: bytes, names: list[str]) -> list[str] | None:
    """The header's column names if the first line is a header, else None."""
    text = first.decode("utf-8", "replace").strip()
    if not text:
        return None
    cells = [c.strip().strip('"') for c in text.split(",")]
    looks_numeric = re.match(r"^[-+]?(\d|\.\d)", cells[0]) is not None
    if looks_numeric and cells[0] not in names:
        return None
    return cells


class _Bad:
    """Malformed rows of one file: all counted, the first MAX_LOGGED_MALFORMED kept with a reason."""

    def __init__(self) -> None:
        self.count = 0
        self.rows: list[str] = []
        self.reasons: list[str] = []

    def add(self, text: str, reason: str) -> None:
        self.count += 1
        if len(self.rows) < MAX_LOGGED_MALFORMED:
            self.rows.append(text)
            self.reasons.append(reason)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]


def _time_unit(values: np.ndarray) -> str:
    """The unit most of a file's epoch times are in: 'us' when 16-digit values outnumber 13-digit ones."""
    n_ms = int(np.count_nonzero((values >= 10**12) & (values < 10**13)))
    n_us = int(np.count_nonzero((values >= 10**15) & (values < 10**16)))
    return "us" if n_us > n_ms else "ms"


def _time_reason(name: str, unit: str, value: str) -> str:
    v = value.strip()
    other = "us" if unit == "ms" else "ms"
    if re.fullmatch(r"\d+", v) and len(v) == TIME_DIGITS[other]:
        return (
            f"column {name}: expected a {TIME_DIGITS[unit]}-digit epoch time in "
            f"{'milli' if unit == 'ms' else 'micro'}seconds like the file's other rows, got {v} "
            f"({len(v)} digits)"
        )
    digits = f" ({len(v)} digits)" if re.fullmatch(r"\d+", v) else ""
    return (
        f"column {name}: expected an epoch time of 13 digits (milliseconds) or 16 digits (microseconds), "
        f"got {v!r}{digits}"
    )


def parse_archive_csv(kind: str, source: Source, *, where: str = "") -> ParsedCsv:
    """Parse one archive CSV (bytes, a binary stream, or a function opening one) of type `kind`.

    Returns the archive's columns typed as CSV_COLUMNS says (datetime and epoch-time columns become
    int64 ms; 16-digit microsecond times are converted). What is accepted of the format drift
    Binance's files show: a header line or none (detected from the first line, in any column order);
    extra columns a header names (e.g. a trailing is_best_match) are ignored with a note; booleans in
    any case (true/True); empty fields in the columns of NULLABLE_COLUMNS are NULL. Any other row is
    malformed: skipped, counted and logged with its raw text and the reason (which column, what was
    expected). `ParsedCsv.failure()` says whether the file as a whole may be used.
    """
    if kind not in CSV_COLUMNS:
        raise ValueError(f"archive type: expected one of {sorted(CSV_COLUMNS)}, got {kind!r}")
    spec = CSV_COLUMNS[kind]
    names = [n for n, _ in spec]
    types = dict(spec)
    nullable = NULLABLE_COLUMNS.get(kind, frozenset())
    ranges = VALUE_RANGES.get(kind, {})
    time_cols = [n for n, t in spec if t == "time"]
    open_stream = _opener(source)
    header = _header_names(_first_line(open_stream), names)
    has_header = header is not None
    column_names = names  # the file's columns, in file order
    notes: list[str] = []
    if header is not None:
        if sorted(header) == sorted(names):
            column_names = header
        elif set(names) <= set(header) and len(set(header)) == len(header):
            column_names = header
            extra = [h for h in header if h not in names]
            notes.append(
                f"column{'s' if len(extra) > 1 else ''} {', '.join(extra)} ignored (not one of the {kind} columns)"
            )
        elif len(header) != len(names):
            log.warning("%s: header %s does not match the %s columns %s", where or kind, header, kind, names)
    bad = _Bad()
    spot_hint = kind == "aggTrades" and not has_header

    def on_invalid(row: Any) -> str:
        reason = f"{row.actual_columns} fields, expected {row.expected_columns} ({','.join(column_names)})"
        if spot_hint and row.actual_columns == len(names) + 1:
            reason += (
                f"; 8 unnamed fields are the spot aggTrades layout ({SPOT_AGG_TRADES}), not USD-M futures"
            )
        bad.add(row.text, reason)
        return "skip"

    read_opts = pacsv.ReadOptions(
        column_names=column_names, skip_rows=1 if has_header else 0, block_size=8 << 20
    )
    parse_opts = pacsv.ParseOptions(invalid_row_handler=on_invalid)

    def read(typed: bool) -> pa.Table:
        bad.clear()
        if typed:
            col_types = {n: _ARROW_TYPES[t] for n, t in types.items()}
            include = names
        else:
            col_types = dict.fromkeys(column_names, pa.string())
            include = column_names
        conv = pacsv.ConvertOptions(
            column_types=col_types,
            include_columns=include,
            true_values=TRUE_VALUES,
            false_values=FALSE_VALUES,
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        with open_stream() as f:
            return pacsv.read_csv(f, read_options=read_opts, parse_options=parse_opts, convert_options=conv)

    table: pa.Table | None
    unit: str | None = None
    try:
        table = read(typed=True)
        if any(table.column(n).null_count for n in names if n not in nullable):
            table = None  # empty fields: find the rows below
        elif any(
            not pc.all(
                pc.and_(pc.greater_equal(table.column(n), lo), pc.less_equal(table.column(n), hi))
            ).as_py()
            for n, (lo, hi) in ranges.items()
            if table.num_rows
        ):
            table = None  # a value out of its range: find the rows below
        elif time_cols and table.num_rows:
            unit = _time_unit(table.column(time_cols[0]).to_numpy(zero_copy_only=False))
            lo, hi, _ = TIME_UNITS[unit]
            for n in time_cols:
                v = table.column(n).to_numpy(zero_copy_only=False)
                if not bool(np.all((v >= lo) & (v < hi))):
                    table = None  # a time in another unit, or in none: find the rows below
                    break
    except pa.ArrowInvalid:
        table = None  # a value that does not convert: find the rows below
    if table is None:
        table, unit = _convert_validating(read(typed=False), column_names, spec, nullable, bad, ranges)
    columns = []
    for n in names:
        col = table.column(n)
        if types[n] == "datetime":
            col = col.cast(pa.int64())
        elif types[n] == "time" and unit == "us":
            col = pc.divide(col, pa.scalar(1000, pa.int64()))  # integer division: floor for times > 0
        columns.append(col)
    table = pa.Table.from_arrays(columns, names=names)
    if unit == "us" and table.num_rows:
        notes.append("epoch times in microseconds (16 digits), stored as milliseconds")
    result = ParsedCsv(
        kind, table, has_header, bad.count, bad.rows, bad.reasons, notes, unit if time_cols else None
    )
    log_parsed(result, where or kind)
    return result


def log_parsed(parsed: ParsedCsv, where: str) -> None:
    """Log each malformed row with its text and reason, and the file's notes."""
    for text, reason in zip(parsed.malformed_rows, parsed.malformed_reasons, strict=True):
        log.warning("%s: malformed row skipped: %r: %s", where, text, reason)
    if parsed.malformed > len(parsed.malformed_rows):
        log.warning(
            "%s: ... and %d more malformed rows", where, parsed.malformed - len(parsed.malformed_rows)
        )
    for note in parsed.notes:
        log.info("%s: %s", where, note)


def _convert_validating(
    raw: pa.Table,
    column_names: list[str],
    spec: tuple[tuple[str, str], ...],
    nullable: frozenset[str],
    bad: _Bad,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> tuple[pa.Table, str | None]:
    """String columns -> typed columns, dropping (and recording in `bad`, with the reason) rows that
    do not convert. Returns the typed table and the unit of the file's epoch times."""
    n = raw.num_rows
    trimmed = {name: pc.utf8_trim_whitespace(raw.column(name)) for name, _ in spec}
    time_cols = [name for name, t in spec if t == "time"]
    unit: str | None = None
    if time_cols:
        first = trimmed[time_cols[0]]
        digits = pc.fill_null(pc.utf8_length(first), 0).to_numpy(zero_copy_only=False)
        is_int = pc.fill_null(pc.match_substring_regex(first, r"^\d+$"), False).to_numpy(zero_copy_only=False)
        n_ms = int(np.count_nonzero(is_int & (digits == 13)))
        n_us = int(np.count_nonzero(is_int & (digits == 16)))
        unit = "us" if n_us > n_ms else "ms"
    # reason[i]: index of the first column (spec order) row i fails, -1 when it converts
    reason = np.full(n, -1, dtype=np.int64)
    for k, (name, t) in enumerate(spec):
        col = trimmed[name]
        if t == "str":
            continue
        if t == "bool":
            ok = pc.is_in(col, value_set=pa.array(TRUE_VALUES + FALSE_VALUES))
        elif t == "time":
            assert unit is not None
            ok = pc.match_substring_regex(col, rf"^\d{{{TIME_DIGITS[unit]}}}$")
        else:
            ok = pc.match_substring_regex(col, _VALID[t])
        if name in nullable:
            ok = pc.or_(ok, pc.equal(col, ""))
        ok_np = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
        if ranges and name in ranges and ok_np.any():
            lo, hi = ranges[name]
            x = np.full(n, np.nan)
            x[ok_np] = np.asarray(col.filter(pa.array(ok_np)).cast(pa.float64()))
            ok_np &= (x >= lo) & (x <= hi)
        reason[(~ok_np) & (reason < 0)] = k
    invalid = reason >= 0
    if invalid.any():
        idx = np.nonzero(invalid)[0]
        shown = idx[: max(0, MAX_LOGGED_MALFORMED - len(bad.rows))]
        texts = (
            pc.binary_join_element_wise(*[pc.fill_null(raw.column(c), "") for c in column_names], ",").take(
                pa.array(shown)
            )
            if len(shown)
            else pa.array([], pa.string())
        )
        for i, text in zip(shown.tolist(), texts.to_pylist(), strict=True):
            name, t = spec[int(reason[i])]
            value = trimmed[name][i].as_py()
            if t == "time":
                why = _time_reason(name, unit or "ms", value or "")
            elif ranges and name in ranges and re.fullmatch(_VALID[t], value or ""):
                lo, hi = ranges[name]
                why = f"column {name}: expected a number from {lo:g} to {hi:g}, got {value!r}"
            elif value == "":
                why = f"column {name}: empty, expected {_EXPECTED[t]}"
            else:
                why = f"column {name}: expected {_EXPECTED[t]}, got {value!r}"
            bad.add(text, why)
        bad.count += len(idx) - len(shown)
        raw = raw.filter(pa.array(~invalid))
        trimmed = {name: pc.utf8_trim_whitespace(raw.column(name)) for name, _ in spec}
    out = []
    for name, t in spec:
        col = trimmed[name]
        if name in nullable and t != "str":
            col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
        if t == "bool":
            col = pc.is_in(col, value_set=pa.array(TRUE_VALUES))
        elif t == "datetime":
            col = pc.strptime(pc.replace_substring(col, "T", " "), "%Y-%m-%d %H:%M:%S", "ms")
        elif t != "str":
            col = col.cast(_ARROW_TYPES[t])
        out.append(col)
    return pa.Table.from_arrays(out, names=[name for name, _ in spec]), unit


# ---------------------------------------------------------------- aggTrades


@dataclass
class AggTradesArchive:
    """One aggTrades archive, parsed: AGG_TRADES rows sorted by aggregate id without duplicates."""

    url: str
    table: pa.Table
    header: bool
    malformed: int = 0
    malformed_rows: list[str] = field(default_factory=list)
    malformed_reasons: list[str] = field(default_factory=list)  # why, for each of malformed_rows
    notes: list[str] = field(default_factory=list)
    parsed_rows: int = 0  # valid rows before duplicates were removed
    duplicates: int = 0  # rows dropped because their aggregate id was already there
    conflicting_duplicates: int = 0  # of those, rows whose values differ from the kept row
    reordered: bool = False  # the file was not in id order
    sha256: str = ""
    size: int = 0

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def first_id(self) -> int | None:
        return int(self.table.column("agg_id")[0].as_py()) if self.rows else None

    @property
    def last_id(self) -> int | None:
        return int(self.table.column("agg_id")[-1].as_py()) if self.rows else None

    def missing_ids(self) -> int:
        """Ids between the first and the last that the archive does not hold."""
        return 0 if not self.rows else int(self.last_id - self.first_id + 1 - self.rows)  # type: ignore[operator]

    def failure(self, max_share: float = MAX_MALFORMED_SHARE) -> str | None:
        """Why this archive must not be loaded (no valid row, too many malformed ones), else None."""
        return file_failure(self.parsed_rows, self.malformed, self.malformed_reasons, max_share)


def aggtrades_records(parsed: ParsedCsv, *, where: str = "") -> tuple[pa.Table, int, int, bool]:
    """Archive columns -> (AGG_TRADES table sorted by id, duplicates, conflicting duplicates, reordered)."""
    t = parsed.table
    n = t.num_rows
    table = pa.Table.from_arrays(
        [
            t.column("agg_trade_id"),
            t.column("transact_time"),
            t.column("price"),
            t.column("quantity"),
            t.column("first_trade_id"),
            t.column("last_trade_id"),
            t.column("is_buyer_maker"),
            pa.nulls(n, pa.int64()),
        ],
        schema=AGG_TRADES,
    )
    if n < 2:
        return table, 0, 0, False
    ids = table.column("agg_id").to_numpy()
    if bool(np.all(ids[1:] > ids[:-1])):
        return table, 0, 0, False
    order = np.argsort(ids, kind="stable")
    reordered = bool(np.any(order != np.arange(n)))
    table = table.take(pa.array(order))
    ids = ids[order]
    keep = np.empty(n, dtype=bool)
    keep[0] = True
    np.not_equal(ids[1:], ids[:-1], out=keep[1:])
    duplicates = int(n - keep.sum())
    conflicts = 0
    if duplicates:
        dup_pos = np.nonzero(~keep)[0]
        differs = np.zeros(len(dup_pos), dtype=bool)
        for name in ("ts_ms", "price", "quantity", "first_trade_id", "last_trade_id", "is_buyer_maker"):
            col = table.column(name).to_numpy()
            differs |= col[dup_pos] != col[dup_pos - 1]
        conflicts = int(differs.sum())
        if conflicts:
            log.warning(
                "%s: %d duplicated aggregate ids carry different values; the first occurrence is kept",
                where or "aggTrades",
                conflicts,
            )
        table = table.filter(pa.array(keep))
    return table, duplicates, conflicts, reordered


def archive_records(kind: str, parsed: ParsedCsv) -> tuple[str, pa.Table]:
    """(writer kind, batch) for an archive type whose rows have a batch schema in records.py.

    aggTrades -> agg_trades (sorted, de-duplicated); fundingRate -> funding_rates; metrics ->
    open_interest (source 'metrics'; rows with an empty open interest left out). Other types have no batch schema yet: NotImplementedError.
    """
    t = parsed.table
    n = t.num_rows
    if kind == "aggTrades":
        return "agg_trades", aggtrades_records(parsed)[0]
    if kind == "fundingRate":
        return "funding_rates", pa.Table.from_arrays(
            [
                t.column("calc_time"),
                t.column("last_funding_rate"),
                pa.nulls(n, pa.float64()),
                t.column("funding_interval_hours").cast(pa.int32()),
            ],
            schema=FUNDING_RATES,
        )
    if kind == "metrics":
        # a row whose open interest is empty has none to store (futures_metrics keeps it, NULL)
        t = t.filter(pc.is_valid(t.column("sum_open_interest")))
        n = t.num_rows
        return "open_interest", pa.Table.from_arrays(
            [
                t.column("create_time"),
                t.column("sum_open_interest"),
                t.column("sum_open_interest_value"),
                pa.array(["metrics"] * n, pa.string()),
                pa.nulls(n, pa.int64()),  # recv_ms: archive rows did not come live
            ],
            schema=OPEN_INTEREST,
        )
    raise NotImplementedError(f"{kind}: parsed by parse_archive_csv, but no batch schema to write it yet")


INFLATE_READ = 1 << 20  # compressed bytes read at a time


class _Inflated(io.RawIOBase):
    """A zip member's deflate data inflated as a stream by ISA-L (isal_zlib: about 3.5x zlib's speed
    here, 0.16 s instead of 0.58 s of CPU for a 163 MB day of aggTrades), its CRC-32 and length
    checked at the end as zipfile checks them: a member that does not inflate to what the zip says
    is an ArchiveError naming the file."""

    def __init__(self, raw: IO[bytes], member: zipfile.ZipInfo, where: str) -> None:
        self.raw, self.member, self.where = raw, member, where
        self.left = member.compress_size
        self.inflater = isal_zlib.decompressobj(-15)  # raw deflate, as zip members hold it
        self.crc = 0
        self.size = 0
        self.pending = memoryview(b"")
        self.done = False

    def readable(self) -> bool:
        return True

    def _more(self) -> None:
        chunk = self.raw.read(min(self.left, INFLATE_READ)) if self.left > 0 else b""
        self.left -= len(chunk)
        try:
            out = self.inflater.decompress(chunk) if chunk else self.inflater.flush()
        except isal_zlib.error as exc:
            raise ArchiveError(f"{self.where}: {self.member.filename} does not inflate ({exc})") from None
        if not chunk:
            self.done = True
        self.crc = isal_zlib.crc32(out, self.crc)
        self.size += len(out)
        self.pending = memoryview(out)
        if self.done and (self.crc != self.member.CRC or self.size != self.member.file_size):
            raise ArchiveError(
                f"{self.where}: {self.member.filename} inflates to {self.size:,} bytes with CRC-32 "
                f"{self.crc:08x}, the zip says {self.member.file_size:,} bytes and {self.member.CRC:08x}"
            )

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = 0
        while n < len(view):
            if not self.pending:
                if self.done:
                    break
                self._more()
                continue
            k = min(len(view) - n, len(self.pending))
            view[n : n + k] = self.pending[:k]
            self.pending = self.pending[k:]
            n += k
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_inflated(path_or_bytes: Path | bytes, member: zipfile.ZipInfo, where: str) -> IO[bytes]:
    """`member`'s data as a stream: its own file handle (each open reads from the start)."""
    if isinstance(path_or_bytes, bytes):
        raw: IO[bytes] = io.BytesIO(path_or_bytes)
    else:
        raw = open(path_or_bytes, "rb")  # noqa: SIM115 (the returned stream owns it and closes it)
    try:
        raw.seek(member.header_offset)
        head = raw.read(30)  # the local file header; its name and extra field lengths say where data starts
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise ArchiveError(f"{where}: {member.filename}: no local file header where the zip says")
        raw.seek(int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little"), io.SEEK_CUR)
    except BaseException:
        raw.close()
        raise
    return io.BufferedReader(_Inflated(raw, member, where), buffer_size=INFLATE_READ)


def _zip_member_opener(
    path_or_bytes: Path | bytes, where: str
) -> tuple[Callable[[], IO[bytes]], Callable[[], None]]:
    zf = zipfile.ZipFile(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
    members = [m for m in zf.infolist() if not m.is_dir()]
    csvs = [m for m in members if m.filename.lower().endswith(".csv")] or members
    if len(csvs) != 1:
        zf.close()
        raise ArchiveError(f"{where}: expected one CSV in the zip, found {[m.filename for m in members]}")
    member = csvs[0]
    if member.compress_type == zipfile.ZIP_DEFLATED and not member.flag_bits & 0x1:  # not encrypted
        return (lambda: _open_inflated(path_or_bytes, member, where)), zf.close
    return (lambda: zf.open(member)), zf.close  # stored (or another method): zipfile reads it


def parse_archive_zip(kind: str, path_or_bytes: Path | bytes, *, where: str = "") -> ParsedCsv:
    """Parse the CSV inside an archive zip, decompressing it as a stream."""
    where = where or (str(path_or_bytes) if isinstance(path_or_bytes, Path) else kind)
    try:
        opener, close = _zip_member_opener(path_or_bytes, where)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{where}: not a zip file ({exc})") from exc
    try:
        return parse_archive_csv(kind, opener, where=where)
    finally:
        close()


def parse_aggtrades_zip(path_or_bytes: Path | bytes, *, url: str = "") -> AggTradesArchive:
    where = url or (str(path_or_bytes) if isinstance(path_or_bytes, Path) else "aggTrades zip")
    parsed = parse_archive_zip("aggTrades", path_or_bytes, where=where)
    table, dups, conflicts, reordered = aggtrades_records(parsed, where=where)
    return AggTradesArchive(
        url=url,
        table=table,
        header=parsed.header,
        malformed=parsed.malformed,
        malformed_rows=parsed.malformed_rows,
        malformed_reasons=parsed.malformed_reasons,
        notes=parsed.notes,
        parsed_rows=parsed.rows,
        duplicates=dups,
        conflicting_duplicates=conflicts,
        reordered=reordered,
    )


class ParseTurns:
    """Parse slots handed out in the order the archives were asked for, not in the order their
    downloads end: archives fetched ahead download side by side, and the one needed first (the
    oldest day) must not wait behind a later one whose download happened to end first. `turn()`
    takes the next place in the line, at once; an archive parses when a slot is free and every
    earlier place has parsed or given up (a failed download, a cancel)."""

    def __init__(self, slots: int) -> None:
        self._free = max(1, slots)
        self._issued = 0
        self._next = 0  # the first place not yet through
        self._through: set[int] = set()  # places past the line out of order, waiting for _next
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def turn(self) -> ParseTurn:
        place, self._issued = self._issued, self._issued + 1
        return ParseTurn(self, place)

    async def _wait(self, place: int) -> None:
        while not (self._free > 0 and self._next == place):
            fut = asyncio.get_running_loop().create_future()
            self._waiting[place] = fut
            try:
                await fut
            finally:
                self._waiting.pop(place, None)
        self._free -= 1
        self._pass(place)

    def _pass(self, place: int) -> None:
        if place < self._next:
            return
        self._through.add(place)
        while self._next in self._through:
            self._through.remove(self._next)
            self._next += 1
        self._wake()

    def _release(self) -> None:
        self._free += 1
        self._wake()

    def _wake(self) -> None:
        fut = self._waiting.get(self._next)
        if fut is not None and not fut.done() and self._free > 0:
            fut.set_result(None)


@dataclass
class ParseTurn:
    """One place in a `ParseTurns` line: `async with` it to parse; `give_up` (idempotent, also
    right after a parse) lets the places after it on."""

    line: ParseTurns
    place: int
    _held: bool = False

    async def __aenter__(self) -> None:
        try:
            await self.line._wait(self.place)
        except BaseException:
            self.give_up()
            raise
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self.line._release()

    def give_up(self) -> None:
        self.line._pass(self.place)


async def load_aggtrades_archive(
    session: aiohttp.ClientSession,
    base_url: str,
    symbol: str,
    period: str,
    when: date | str,
    *,
    cache_dir: Path | None = None,
    tmp_dir: Path | None = None,
    parse_turn: ParseTurn | None = None,
    download_turn: ParseTurn | None = None,
) -> AggTradesArchive:
    """Download, verify and parse one aggTrades archive (parsing runs in a worker thread, at its
    `parse_turn` of a `ParseTurns`: archives fetched ahead then parse one after the other in the
    order they were asked for, so the first is ready soonest instead of all of them late). The
    download likewise at its `download_turn`, when given: archives fetched ahead then download one
    after the other, the first with the whole link to itself, instead of all of them sharing it and
    ending together. The turns are given up however this ends.

    Raises ArchiveMissing (404: not published) and ChecksumMismatch (refused).
    """
    url = archive_url(base_url, "aggTrades", symbol, period, when)
    try:
        try:
            async with download_turn or contextlib.nullcontext():
                dl = await download_archive(session, url, cache_dir=cache_dir, tmp_dir=tmp_dir)
        finally:
            if download_turn is not None:
                download_turn.give_up()
        try:
            async with parse_turn or contextlib.nullcontext():
                result = await asyncio.to_thread(parse_aggtrades_zip, dl.path, url=url)
        finally:
            dl.discard()
    finally:
        if parse_turn is not None:
            parse_turn.give_up()
    result.sha256, result.size = dl.sha256, dl.size
    return result
