"""Replay: serve a folder of real data.binance.vision archives instead of the generator.

The folder may be laid out like data.binance.vision (data/futures/um/daily/aggTrades/SYMBOL/...) or
flat: every `<SYMBOL>-aggTrades-YYYY-MM-DD.zip` (daily) and `<SYMBOL>-aggTrades-YYYY-MM.zip` (monthly)
under it is read, duplicates dropped and rows sorted by aggregate id. Each day becomes a segment:
REST and websocket aggregate trades come from those rows, the book's touch from the trade prices
(a sell printed at the bid, a buy at the ask), mark and index from the mid. Without clock_start the
exchange clock starts at the beginning of the last day found: that day streams live, the days before
are history.

Archive requests are answered with the recorded file, byte for byte, whenever the folder holds one of
that kind and period: `<SYMBOL>-<kind>-<date>.zip` for aggTrades, bookDepth, metrics and fundingRate,
and `<SYMBOL>-1m-<date>.zip` for the kline kinds (those need the kind in a parent folder's name, as in
data.binance.vision's `markPriceKlines/<SYMBOL>/1m/`). Its .CHECKSUM is the sibling `<file>.CHECKSUM`
as recorded when there is one, else the sha256 of the served zip. Recorded files are served even for
periods before the first aggTrades day, but only once the period has ended on the exchange clock.
Kinds with no recorded file are built from the trade rows like the generator's (flat funding,
open interest and premium): only the symbols with aggTrades archives are listed.
"""

from __future__ import annotations

import io
import logging
import math
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from microstructure.exchange.archives import DAILY_TYPES, KLINE_TYPES, MONTHLY_TYPES, ArchiveRef, day_ms
from microstructure.exchange.config import DAY_MS, ExchangeConfig, SymbolSpec, symbol_spec
from microstructure.exchange.market import MarketState, Segment, SymbolMarket

log = logging.getLogger(__name__)

FILE_RE = re.compile(r"^(?P<symbol>[A-Z0-9]+)-aggTrades-(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.zip$")
ANY_RE = re.compile(r"^(?P<symbol>[A-Z0-9]+)-(?P<kind>[A-Za-z]+|1m)-(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.zip$")
NAMES = [
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
]


def find_files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.zip")):
        m = FILE_RE.match(path.name)
        if m:
            out.setdefault(m["symbol"], []).append(path)
    return out


def find_archives(root: Path) -> dict[str, dict[str, Path]]:
    """Every recorded archive under root: symbol -> {data.binance.vision path: file}."""
    out: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*.zip")):
        m = ANY_RE.match(path.name)
        if not m:
            continue
        kind = m["kind"]
        if kind == "1m":  # kline files do not name their kind: take it from a parent folder
            kind = next((p for p in reversed(path.parent.parts) if p in KLINE_TYPES), "")
            if not kind:
                log.warning("replay: %s is a kline archive outside a *Klines folder: ignored", path)
                continue
        period = "daily" if len(m["date"]) == 10 else "monthly"
        if kind not in (DAILY_TYPES if period == "daily" else MONTHLY_TYPES):
            continue
        ref = ArchiveRef(period, kind, m["symbol"], m["date"])
        out.setdefault(ref.symbol, {})[ref.path] = path
    return out


def _decimals(col: pa.Array) -> int:
    s = col.to_numpy(zero_copy_only=False).astype(str)
    frac = np.char.partition(s, ".")[:, 2]
    return int(np.char.str_len(frac).max()) if len(s) else 0


def read_agg_zip(path: Path) -> tuple[dict[str, np.ndarray], int, int]:
    """Rows of one aggTrades archive (header or not), with the price and quantity decimals."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(zf.namelist()[0])
    first = data[: data.find(b"\n")]
    has_header = not first[:1].isdigit()
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=NAMES, skip_rows=1 if has_header else 0),
        convert_options=pacsv.ConvertOptions(
            column_types={"price": pa.string(), "quantity": pa.string(), "is_buyer_maker": pa.string()}
        ),
    )
    pd_, qd = _decimals(table["price"].combine_chunks()), _decimals(table["quantity"].combine_chunks())
    cols = {
        "a": table["agg_trade_id"].to_numpy().astype(np.int64),
        "price_s": table["price"].to_numpy(zero_copy_only=False).astype(str),
        "qty_s": table["quantity"].to_numpy(zero_copy_only=False).astype(str),
        "first": table["first_trade_id"].to_numpy().astype(np.int64),
        "last": table["last_trade_id"].to_numpy().astype(np.int64),
        "T": table["transact_time"].to_numpy().astype(np.int64),
        "maker": np.char.lower(table["is_buyer_maker"].to_numpy(zero_copy_only=False).astype(str)) == "true",
    }
    return cols, pd_, qd


def _units(text: np.ndarray, dec: int) -> np.ndarray:
    return np.round(text.astype(np.float64) * 10**dec).astype(np.int64)


def replay_clock_start(root: Path) -> datetime:
    """Default exchange time for a replay: the start of the last day found."""
    last = 0
    for paths in find_files(root).values():
        for p in paths:
            cols, _, _ = read_agg_zip(p)
            if len(cols["T"]):
                last = max(last, int(cols["T"].max()))
    if not last:
        raise ValueError(f"no aggTrades archives with rows under {root}")
    return datetime.fromtimestamp(last // DAY_MS * DAY_MS / 1000, tz=UTC)


class ReplayMarket(SymbolMarket):
    """A market whose segments are recorded days; nothing is generated."""

    def __init__(self, spec: SymbolSpec, seed: int, segments: list[Segment], files: dict[str, Path]) -> None:
        super().__init__(spec, seed, 1000, segments[0].t0, segments[0].t0)
        for seg in segments:
            self.segments.append(seg)
            self._t0s.append(seg.t0)
            self._id0s.append(seg.agg_id0)
        self._state = segments[-1].end
        self.files = files  # data.binance.vision path -> recorded file

    @property
    def end_ms(self) -> int:  # recorded data never needs generating
        return 1 << 62

    def ensure(self, t_ms: int) -> None:
        return None


def _segment(t0: int, t1: int, cols: dict[str, np.ndarray], spec: SymbolSpec, pd_: int, qd: int) -> Segment:
    price = _units(cols["price_s"], pd_)
    qty = _units(cols["qty_s"], qd)
    tick = spec.tick
    bid = np.where(cols["maker"], price, price - tick)
    ask = bid + tick
    n_sec = (t1 - t0) // 1000
    sec_t = t0 + 1000 * np.arange(n_sec, dtype=np.int64)
    qi = np.searchsorted(cols["T"], sec_t + 999, side="right") - 1
    p0 = price[0] if len(price) else tick
    mid = np.where(qi >= 0, (bid[np.maximum(qi, 0)] + ask[np.maximum(qi, 0)]) / 2.0, p0) / 10**pd_
    n_min = -(-(t1 - t0) // 60_000)
    state = MarketState(
        t_ms=t0,
        agg_id=int(cols["a"][0]),
        trade_id=int(cols["first"][0]),
        log_mid=math.log(max(p0, 1)),
        bid=int(bid[0]),
        ask=int(ask[0]),
        var=0.0,
        premium=0.0,
        premium_level=0.0,
        log_oi=math.log(1e4),
        fund_start=t0,
        fund_sum=0.0,
        fund_n=0,
    )
    f_times = np.arange((t0 // 28_800_000 + 1) * 28_800_000, t1 + 1, 28_800_000, dtype=np.int64)
    f_idx = np.clip((f_times - 1 - t0) // 1000, 0, max(n_sec - 1, 0))
    end = MarketState(**{**state.__dict__, "t_ms": t1, "agg_id": int(cols["a"][-1]) + 1})
    return Segment(
        t0=t0,
        t1=t1,
        start=state,
        end=end,
        agg_id0=int(cols["a"][0]),
        T=cols["T"],
        price=price,
        qty=qty,
        first=cols["first"],
        last=cols["last"],
        maker=cols["maker"],
        bid=bid,
        ask=ask,
        mark=mid,
        index=mid,
        premium=np.zeros(n_sec),
        est_rate=np.full(n_sec, 0.0001),
        oi=np.full(n_min, 1e4),
        funding_T=f_times,
        funding_rate=np.full(len(f_times), 0.0001),
        funding_mark=mid[f_idx] if n_sec else np.zeros(len(f_times)),
    )


def load_replay(cfg: ExchangeConfig) -> dict[str, SymbolMarket]:
    assert cfg.replay_dir is not None
    found = find_files(cfg.replay_dir)
    recorded = find_archives(cfg.replay_dir)
    if not found:
        raise ValueError(f"no <SYMBOL>-aggTrades-<date>.zip archives under {cfg.replay_dir}")
    wanted = [s for s in found if s in cfg.symbols] or list(found)
    markets: dict[str, SymbolMarket] = {}
    for sym in wanted:
        parts = []
        pd_, qd = 0, 0
        for path in found[sym]:
            cols, p, q = read_agg_zip(path)
            parts.append(cols)
            pd_, qd = max(pd_, p), max(qd, q)
        allc = {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
        a, idx = np.unique(allc["a"], return_index=True)  # drops duplicates, sorts by id
        allc = {k: v[idx] for k, v in allc.items()}
        base = symbol_spec(sym)
        tick = base.tick * 10 ** (pd_ - base.price_decimals) if pd_ >= base.price_decimals else 1
        prices = np.unique(_units(allc["price_s"][:100_000], pd_))
        if len(prices) > 1:
            tick = int(np.gcd.reduce(np.diff(prices)))
        spec = SymbolSpec(
            sym, base.base_asset, base.quote_asset, max(tick, 1), pd_, 1, qd, base.start_price,
            base.activity, base.daily_vol, base.median_lots,
        )  # fmt: skip
        day = allc["T"] // DAY_MS
        segments = []
        for d in np.unique(day).tolist():
            sel = day == d
            segments.append(
                _segment(d * DAY_MS, (d + 1) * DAY_MS, {k: v[sel] for k, v in allc.items()}, spec, pd_, qd)
            )
        markets[sym] = ReplayMarket(spec, cfg.seed, segments, recorded.get(sym, {}))
        log.info("replay %s: %d rows over %d days", sym, len(a), len(segments))
    return markets


def original_file(market: SymbolMarket, ref: ArchiveRef) -> Path | None:
    """The recorded file of this archive, if the replay folder holds one."""
    files = getattr(market, "files", None)
    return files.get(ref.path) if files else None


def original_checksum(market: SymbolMarket, ref: ArchiveRef) -> Path | None:
    """The recorded `<file>.CHECKSUM` beside the archive's recorded file, if there is one."""
    original = original_file(market, ref)
    if original is None:
        return None
    sibling = original.with_name(original.name + ".CHECKSUM")
    return sibling if sibling.is_file() else None


__all__ = [
    "ReplayMarket",
    "day_ms",
    "find_archives",
    "load_replay",
    "original_checksum",
    "original_file",
    "replay_clock_start",
]
