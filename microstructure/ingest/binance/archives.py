"""data.binance.vision bulk archives: download with sha256 verification, stream-unzip, parse the CSV.

Layout: {archive_url}/data/futures/um/{daily|monthly}/{type}/{SYMBOL}/{SYMBOL}-{type}-{YYYY-MM-DD|YYYY-MM}.zip
(kline types live under .../{SYMBOL}/1m/{SYMBOL}-1m-{date}.zip), each with a sibling `.zip.CHECKSUM`
holding "<sha256>  <filename>".

- 404 on the zip or its checksum: the archive is not published (yet): `ArchiveMissing`.
- the sha256 of the zip, computed while it streams to a temporary file, differs from the published
  one: `ChecksumMismatch` (nothing of that archive is returned; the caller refuses that period).
- the CSV is read from the zip member as a stream by pyarrow.csv; whether a header line exists is
  decided by looking at the first line (Binance's files have one only from 2022-08-11).
- malformed rows (wrong column count, unparsable values) are counted and logged with their raw text;
  the other rows are kept.
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

# Column specs by archive type: (name, type) with type one of int, float, bool, str, datetime.
CSV_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "aggTrades": (
        ("agg_trade_id", "int"),
        ("price", "float"),
        ("quantity", "float"),
        ("first_trade_id", "int"),
        ("last_trade_id", "int"),
        ("transact_time", "int"),
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
    "fundingRate": (("calc_time", "int"), ("funding_interval_hours", "int"), ("last_funding_rate", "float")),
    "klines": (
        ("open_time", "int"),
        ("open", "float"),
        ("high", "float"),
        ("low", "float"),
        ("close", "float"),
        ("volume", "float"),
        ("close_time", "int"),
        ("quote_volume", "float"),
        ("count", "int"),
        ("taker_buy_volume", "float"),
        ("taker_buy_quote_volume", "float"),
        ("ignore", "str"),
    ),
}
for _k in ("markPriceKlines", "indexPriceKlines", "premiumIndexKlines"):
    CSV_COLUMNS[_k] = CSV_COLUMNS["klines"]

_ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "str": pa.string(),
    "datetime": pa.timestamp("ms"),
}
_VALID = {
    "int": r"^\s*[-+]?\d+\s*$",
    "float": r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$",
    "datetime": r"^\s*\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?\s*$",
}
TRUE_VALUES = ["true", "True", "TRUE"]
FALSE_VALUES = ["false", "False", "FALSE"]


@dataclass
class ParsedCsv:
    kind: str
    table: pa.Table  # the archive's columns, typed (datetime columns as int64 ms)
    header: bool
    malformed: int = 0
    malformed_rows: list[str] = field(default_factory=list)  # raw text (first MAX_LOGGED_MALFORMED)

    @property
    def rows(self) -> int:
        return self.table.num_rows


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


def parse_archive_csv(kind: str, source: Source, *, where: str = "") -> ParsedCsv:
    """Parse one archive CSV (bytes, a binary stream, or a function opening one) of type `kind`.

    Returns the archive's columns typed as CSV_COLUMNS says (datetime columns become int64 ms).
    Malformed rows are skipped, counted and logged with their raw text.
    """
    if kind not in CSV_COLUMNS:
        raise ValueError(f"archive type: expected one of {sorted(CSV_COLUMNS)}, got {kind!r}")
    spec = CSV_COLUMNS[kind]
    names = [n for n, _ in spec]
    types = dict(spec)
    open_stream = _opener(source)
    header = _header_names(_first_line(open_stream), names)
    has_header = header is not None
    column_names = names
    if header is not None:
        if sorted(header) == sorted(names):
            column_names = header
        elif len(header) != len(names):
            log.warning("%s: header %s does not match the %s columns %s", where or kind, header, kind, names)
    bad: list[str] = []

    def on_invalid(row: Any) -> str:
        bad.append(row.text)
        return "skip"

    read_opts = pacsv.ReadOptions(
        column_names=column_names, skip_rows=1 if has_header else 0, block_size=8 << 20
    )
    parse_opts = pacsv.ParseOptions(invalid_row_handler=on_invalid)

    def read(typed: bool) -> pa.Table:
        bad.clear()
        col_types = (
            {n: _ARROW_TYPES[t] for n, t in types.items()} if typed else dict.fromkeys(names, pa.string())
        )
        conv = pacsv.ConvertOptions(
            column_types=col_types,
            include_columns=names,
            true_values=TRUE_VALUES,
            false_values=FALSE_VALUES,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        with open_stream() as f:
            return pacsv.read_csv(f, read_options=read_opts, parse_options=parse_opts, convert_options=conv)

    table: pa.Table | None
    try:
        table = read(typed=True)
        if any(table.column(n).null_count for n in names):
            table = None  # empty fields: find the rows below
    except pa.ArrowInvalid:
        table = None  # a value that does not convert: find the rows below
    if table is None:
        table, bad_values = _convert_validating(read(typed=False), spec)
        bad.extend(bad_values)
    columns = []
    for n in names:
        col = table.column(n)
        if types[n] == "datetime":
            col = col.cast(pa.int64())
        columns.append(col)
    table = pa.Table.from_arrays(columns, names=names)
    result = ParsedCsv(kind, table, has_header, len(bad), bad[:MAX_LOGGED_MALFORMED])
    for text in result.malformed_rows:
        log.warning("%s: malformed row skipped: %r", where or kind, text)
    if len(bad) > MAX_LOGGED_MALFORMED:
        log.warning("%s: ... and %d more malformed rows", where or kind, len(bad) - MAX_LOGGED_MALFORMED)
    return result


def _convert_validating(raw: pa.Table, spec: tuple[tuple[str, str], ...]) -> tuple[pa.Table, list[str]]:
    """String columns -> typed columns, dropping (and returning the text of) rows that do not convert."""
    names = [n for n, _ in spec]
    valid = pa.array(np.ones(raw.num_rows, dtype=bool))
    for n, t in spec:
        col = raw.column(n)
        if t == "bool":
            ok = pc.is_in(pc.utf8_trim_whitespace(col), value_set=pa.array(TRUE_VALUES + FALSE_VALUES))
        elif t == "str":
            continue
        else:
            ok = pc.match_substring_regex(col, _VALID[t])
        valid = pc.and_(valid, pc.fill_null(ok, False))
    bad_rows: list[str] = []
    invalid = pc.invert(valid)
    if pc.any(invalid).as_py():
        bad = raw.filter(invalid)
        joined = pc.binary_join_element_wise(*[bad.column(n) for n in names], ",")
        bad_rows = joined.to_pylist()
        raw = raw.filter(valid)
    out = []
    for n, t in spec:
        col = raw.column(n)
        if t == "bool":
            col = pc.is_in(pc.utf8_trim_whitespace(col), value_set=pa.array(TRUE_VALUES))
        elif t == "datetime":
            col = pc.strptime(
                pc.replace_substring(pc.utf8_trim_whitespace(col), "T", " "), "%Y-%m-%d %H:%M:%S", "ms"
            )
        elif t != "str":
            col = pc.utf8_trim_whitespace(col).cast(_ARROW_TYPES[t])
        out.append(col)
    return pa.Table.from_arrays(out, names=names), bad_rows


# ---------------------------------------------------------------- aggTrades


@dataclass
class AggTradesArchive:
    """One aggTrades archive, parsed: AGG_TRADES rows sorted by aggregate id without duplicates."""

    url: str
    table: pa.Table
    header: bool
    malformed: int = 0
    malformed_rows: list[str] = field(default_factory=list)
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
    open_interest (source 'metrics'). Other types have no batch schema yet: NotImplementedError.
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
    return (lambda: zf.open(member)), zf.close


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
        duplicates=dups,
        conflicting_duplicates=conflicts,
        reordered=reordered,
    )


async def load_aggtrades_archive(
    session: aiohttp.ClientSession,
    base_url: str,
    symbol: str,
    period: str,
    when: date | str,
    *,
    cache_dir: Path | None = None,
    tmp_dir: Path | None = None,
) -> AggTradesArchive:
    """Download, verify and parse one aggTrades archive (parsing runs in a worker thread).

    Raises ArchiveMissing (404: not published) and ChecksumMismatch (refused).
    """
    url = archive_url(base_url, "aggTrades", symbol, period, when)
    dl = await download_archive(session, url, cache_dir=cache_dir, tmp_dir=tmp_dir)
    try:
        result = await asyncio.to_thread(parse_aggtrades_zip, dl.path, url=url)
    finally:
        dl.discard()
    result.sha256, result.size = dl.sha256, dl.size
    return result
