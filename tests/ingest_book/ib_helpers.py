"""Helpers for the book / market-data tests (a uniquely named module)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
import zipfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from microstructure.config import Settings
from microstructure.exchange import ExchangeConfig
from microstructure.exchange.archives import COLUMNS, KLINE_TYPES
from microstructure.ingest.sink.writer import Writer

# 5 s into a minute, away from funding boundaries unless a test wants one
FIXED_START = datetime(2024, 3, 6, 12, 0, 5, tzinfo=UTC)


async def make_writer(dsn: str, spill: Path) -> Any:
    w = Writer(dsn, spill)
    await w.start()
    return w


def exchange_config(cache: Path, **kw: Any) -> ExchangeConfig:
    base: dict[str, Any] = {
        "symbols": ("BTCUSDT", "ETHUSDT"),
        "seed": 11,
        "history_days": 0,
        "trades_per_day": 20_000,
        "live_rate": 20.0,
        "clock_start": FIXED_START,
        "cache_dir": cache,
    }
    base.update(kw)
    return ExchangeConfig(**base)


def settings_for(ex: Any, db_url: str, home: Path) -> Settings:
    s = Settings(database_url=db_url, home=home)
    s.point_at_exchange(ex.base_url)
    return s


class Tap:
    """An independent client recording what the exchange sends on some streams (the test's oracle)."""

    def __init__(self, ws_url: str, streams: list[str]) -> None:
        self.url = ws_url + "/stream?streams=" + "/".join(streams)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.malformed = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url) as ws:
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.2)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    obj = json.loads(msg.data)
                except ValueError:
                    self.malformed += 1
                    continue
                self.messages.append((obj["stream"], obj["data"]))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


async def fetch_all(dsn: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def wall() -> float:
    return time.monotonic()


# ---------------------------------------------------------------- archives read by pandas (the oracle)


async def archive_csv(
    base_url: str, kind: str, symbol: str, when: str, period: str = "daily"
) -> pd.DataFrame:
    """One data.binance.vision archive of the exchange as pandas reads it (header line or none)."""
    if kind in KLINE_TYPES:
        path = f"{kind}/{symbol}/1m/{symbol}-1m-{when}"
    else:
        path = f"{kind}/{symbol}/{symbol}-{kind}-{when}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base_url}/data/futures/um/{period}/{path}.zip") as r,
    ):
        assert r.status == 200, path
        data = await r.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        text = z.read(z.namelist()[0]).decode()
    names = COLUMNS["klines" if kind in KLINE_TYPES else kind].split(",")
    header = 0 if not text[:1].isdigit() else None
    return pd.read_csv(io.StringIO(text), header=header, names=names)


def stored(dsn: str, sql: str, *args: Any) -> pd.DataFrame:
    return pd.DataFrame([dict(r) for r in asyncio.run(fetch_all(dsn, sql, *args))])


def _day(symbol: str, day: str) -> str:
    return f"symbol = '{symbol}' AND ts >= '{day}' AND ts < '{day}'::date + 1"


def _same_times(got: pd.Series, want_ms: pd.Series) -> None:
    assert (got.to_numpy() == pd.to_datetime(want_ms, unit="ms", utc=True).to_numpy()).all()


def check_book_depth_bands(dsn: str, symbol: str, day: str, csv: pd.DataFrame) -> None:
    got = stored(
        dsn,
        f"SELECT ts, percentage, depth, notional FROM book_depth_bands WHERE {_day(symbol, day)} ORDER BY ts, percentage",
    )
    want = csv.assign(ts=pd.to_datetime(csv["timestamp"], utc=True)).sort_values(["ts", "percentage"])
    assert len(got) == len(want) > 0
    assert (got["ts"].to_numpy() == want["ts"].to_numpy()).all()
    # numeric(5,2): the band exactly as the archive writes it (-5 or -5.00, -0.20), not a float32 near it
    assert [Decimal(str(v)) for v in got["percentage"]] == [
        Decimal(repr(float(v))) for v in want["percentage"]
    ]
    assert np.array_equal(got["depth"].to_numpy(), want["depth"].to_numpy())
    assert np.array_equal(got["notional"].to_numpy(), want["notional"].to_numpy())


def check_band_features(dsn: str, symbol: str, day: str, csv: pd.DataFrame) -> None:
    """Every 1m and 15m bar of the day carries the book-depth band features of its bookDepth rows
    (docs/FEATURES.md "Book depth bands": each band's and side's mean over the bar's snapshots,
    imbalances of those means), computed here from the archive; bands the file lacks are NULL."""
    rows = csv.assign(ts=pd.to_datetime(csv["timestamp"], utc=True), pct=csv["percentage"].astype(float))
    for freq, tf in (("1min", "1m"), ("15min", "15m")):
        means = (
            rows.assign(bar=rows["ts"].dt.floor(freq)).groupby(["bar", "pct"])[["depth", "notional"]].mean()
        )
        got = stored(
            dsn,
            f"SELECT * FROM features_{tf} WHERE symbol = $1 AND bucket >= $2::date AND bucket < $2::date + 1",
            symbol,
            date.fromisoformat(day),
        )
        got = got.set_index(pd.to_datetime(got["bucket"], utc=True)).sort_index()
        assert len(got) == len(means.index.get_level_values("bar").unique()) > 0, tf
        for label, b in (("0p2", 0.2), ("1", 1.0), ("2", 2.0), ("3", 3.0), ("4", 4.0), ("5", 5.0)):
            cols = [
                f"{k}_{label}pct" for k in ("depth_imbalance", "notional_imbalance", "bid_depth", "ask_depth")
            ]
            if b not in set(rows["pct"].abs()):
                assert got[cols].isna().all().all(), (tf, label)  # not recorded: NULL, never guessed
                continue
            side = {p: means.xs(p, level="pct").reindex(got.index) for p in (-b, b)}
            bid, ask = side[-b], side[b]
            want = {
                cols[0]: (bid["depth"] - ask["depth"]) / (bid["depth"] + ask["depth"]),
                cols[1]: (bid["notional"] - ask["notional"]) / (bid["notional"] + ask["notional"]),
                cols[2]: bid["depth"],
                cols[3]: ask["depth"],
            }
            for c, w in want.items():
                assert got[c].notna().all(), (tf, c)  # a snapshot every ~30 s: every bar has every band
                assert np.allclose(got[c].to_numpy(float), w.to_numpy(float), rtol=1e-12, atol=1e-15), (tf, c)


def check_metrics(dsn: str, symbol: str, day: str, csv: pd.DataFrame) -> None:
    """futures_metrics and open_interest (source 'metrics') of a day equal its metrics archive."""
    got = stored(dsn, f"SELECT * FROM futures_metrics WHERE {_day(symbol, day)} ORDER BY ts")
    assert len(got) == len(csv) > 0
    want_ts = pd.to_datetime(csv["create_time"], utc=True).to_numpy()
    assert (got["ts"].to_numpy() == want_ts).all()
    for c in csv.columns.drop(["create_time", "symbol"]):
        assert np.allclose(got[c].to_numpy(float), csv[c].to_numpy(float), rtol=0, atol=0, equal_nan=True), c
    oi = stored(dsn, f"SELECT * FROM open_interest WHERE {_day(symbol, day)} ORDER BY ts")
    assert set(oi["source"]) == {"metrics"}
    assert (oi["ts"].to_numpy() == want_ts).all()
    assert np.array_equal(oi["open_interest"].to_numpy(float), csv["sum_open_interest"].to_numpy(float))
    assert np.array_equal(
        oi["open_interest_value"].to_numpy(float), csv["sum_open_interest_value"].to_numpy(float)
    )


def check_klines(dsn: str, symbol: str, day: str, kind: str, csv: pd.DataFrame) -> None:
    """price_klines of one kind (mark | index | premium) and day equal its 1m kline archive."""
    got = stored(dsn, f"SELECT * FROM price_klines WHERE kind = '{kind}' AND {_day(symbol, day)} ORDER BY ts")
    assert len(got) == len(csv) == 1440
    _same_times(got["ts"], csv["open_time"])
    _same_times(got["close_ts"], csv["close_time"])
    for c in ("open", "high", "low", "close"):
        assert np.array_equal(got[c].to_numpy(), csv[c].to_numpy()), c


def check_funding_archive(dsn: str, symbol: str, csv: pd.DataFrame, t0: int, t1: int) -> pd.DataFrame:
    """Stored settlements in [t0, t1) equal the fundingRate archive's; the stored rows."""
    want = csv[(csv["calc_time"] >= t0) & (csv["calc_time"] < t1)].sort_values("calc_time")
    got = stored(
        dsn,
        "SELECT * FROM funding_rates WHERE symbol = $1 AND funding_ts >= to_timestamp($2 / 1000.0) "
        "AND funding_ts < to_timestamp($3 / 1000.0) ORDER BY funding_ts",
        symbol,
        t0,
        t1,
    )
    assert len(got) == len(want) > 0
    _same_times(got["funding_ts"], want["calc_time"])
    assert np.array_equal(got["funding_rate"].to_numpy(), want["last_funding_rate"].to_numpy())
    assert got["funding_interval_hours"].tolist() == want["funding_interval_hours"].tolist()
    return got


def check_agg_trades(dsn: str, symbol: str, day: str, csv: pd.DataFrame) -> None:
    """agg_trades of a day equal its aggTrades archive, id for id."""
    got = stored(dsn, f"SELECT * FROM agg_trades WHERE {_day(symbol, day)} ORDER BY agg_id")
    want = csv.sort_values("agg_trade_id").drop_duplicates("agg_trade_id")
    assert len(got) == len(want) > 0
    assert got["agg_id"].tolist() == want["agg_trade_id"].tolist()
    _same_times(got["ts"], want["transact_time"])
    assert np.array_equal(got["price"].to_numpy(), want["price"].to_numpy())
    assert np.array_equal(got["quantity"].to_numpy(), want["quantity"].to_numpy())
    assert got["first_trade_id"].tolist() == want["first_trade_id"].tolist()
    assert got["last_trade_id"].tolist() == want["last_trade_id"].tolist()
    assert (
        got["is_buyer_maker"].tolist() == want["is_buyer_maker"].astype(str).str.lower().eq("true").tolist()
    )


def collect_cmd(db_url: str, home: Path, *args: str) -> list[str]:
    """`microstructure collect ARGS` through the real console entry, in a subprocess."""
    return [
        sys.executable,
        "-m",
        "microstructure",
        "--database-url",
        db_url,
        "--home",
        str(home),
        "collect",
        *args,
    ]


def day_ms(d: str | date) -> int:
    """Epoch milliseconds of a UTC day's start (a date or YYYY-MM-DD)."""
    d = date.fromisoformat(d) if isinstance(d, str) else d
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
