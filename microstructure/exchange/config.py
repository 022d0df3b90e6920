"""Settings of the local exchange: the market it simulates, the server, and the faults it injects."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

DAY_MS = 86_400_000
DATA_VERSION = 2  # bump when generated data or archive formats change: invalidates caches


@dataclass(frozen=True)
class SymbolSpec:
    """Static description of one contract: precision and a typical price and activity level."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick: int  # tick size in units of 10**-price_decimals
    price_decimals: int
    step: int  # lot size in units of 10**-qty_decimals
    qty_decimals: int
    start_price: float
    activity: float  # relative number of trades per day (BTCUSDT = 1)
    daily_vol: float  # typical daily return standard deviation
    median_lots: float  # median raw trade size in lots
    onboard_ms: int = 1569398400000

    @property
    def tick_size(self) -> float:
        return self.tick / 10**self.price_decimals

    @property
    def step_size(self) -> float:
        return self.step / 10**self.qty_decimals


KNOWN_SYMBOLS: dict[str, SymbolSpec] = {
    s.symbol: s
    for s in (
        SymbolSpec("BTCUSDT", "BTC", "USDT", 10, 2, 1, 3, 65000.0, 1.0, 0.025, 6),
        SymbolSpec("ETHUSDT", "ETH", "USDT", 1, 2, 1, 3, 3200.0, 0.8, 0.032, 60),
        SymbolSpec("SOLUSDT", "SOL", "USDT", 10, 4, 1, 2, 150.0, 0.5, 0.045, 150),
        SymbolSpec("BNBUSDT", "BNB", "USDT", 10, 3, 1, 2, 580.0, 0.3, 0.03, 30),
        SymbolSpec("XRPUSDT", "XRP", "USDT", 1, 4, 1, 1, 0.6, 0.4, 0.04, 8000),
        SymbolSpec("DOGEUSDT", "DOGE", "USDT", 1, 6, 1, 0, 0.15, 0.4, 0.05, 30000),
    )
}


UNIVERSE_NAME = re.compile(r"^U(\d{4})USDT$")


def universe_symbols(n: int, start: int = 1) -> list[str]:
    """The names of `n` synthetic perpetuals of `--universe` from number `start` on (U0001USDT, ...)."""
    return [f"U{i:04d}USDT" for i in range(start, start + n)]


def universe_spec(symbol: str) -> SymbolSpec:
    """A synthetic perpetual of the universe: a price drawn log-uniform from 0.0001 to 50,000 and
    Binance-like precision for it (about 5 significant digits of tick, lots worth a few dollars)."""
    h = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:8], "big")
    price = 10 ** (-4 + 8.7 * ((h & 0xFFFFFF) / 0xFFFFFF))
    mag = math.floor(math.log10(price))
    price_decimals = max(0, min(8, 4 - mag))
    tick = 1 if (h >> 24) % 3 else 10 if price_decimals > 0 else 1
    qty_decimals = max(0, min(3, mag + 1))
    start = round(price, price_decimals)
    median_lots = max(1.0, round(200.0 / (price * 10**-qty_decimals) / 10))
    base = symbol[: -len("USDT")]
    return SymbolSpec(
        symbol, base, "USDT", tick, price_decimals, 1, qty_decimals, start, 0.2, 0.05, median_lots
    )


def symbol_spec(symbol: str) -> SymbolSpec:
    """Spec of a known symbol, a universe contract (universe_spec), else a deterministic generic
    contract quoted in USDT."""
    symbol = symbol.upper()
    if symbol in KNOWN_SYMBOLS:
        return KNOWN_SYMBOLS[symbol]
    if UNIVERSE_NAME.match(symbol):
        return universe_spec(symbol)
    quote = "USDT" if symbol.endswith("USDT") else "USDC" if symbol.endswith("USDC") else "USDT"
    base = symbol[: -len(quote)] if symbol.endswith(quote) else symbol
    h = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
    price = 1.0 + (h % 2000) / 10.0
    return SymbolSpec(symbol, base, quote, 1, 3, 1, 1, price, 0.2, 0.05, 50)


def parse_date(value: str | date) -> date:
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


@dataclass
class FaultConfig:
    """Faults injected for a run; every knob is off by default.

    ws_close_after       close each websocket (abruptly, no close frame) after N messages sent
    ws_close_random      mean seconds before a websocket is closed at a random time (exponential)
    ws_skip_agg_trades   probability that an aggTrade message is silently not sent (ids go missing)
    ws_break_depth       probability that a diff-depth event is not sent (the next one's pu breaks)
    ws_malformed         probability that a message is sent truncated / malformed
    ws_stall_after       after N messages a websocket goes silent: it stays open and answers pings
                         but sends no data (what it would have sent is lost)
    ws_stall_for         seconds a stalled websocket stays silent before sending again (0: until closed)
    rest_429_rate        probability that a REST request answers 429 regardless of its weight
    rest_500_rate        probability that a REST request answers HTTP 500 (1: an exchange that keeps failing)
    rest_delay           seconds added before every HTTP answer (REST and archives)
    rest_malformed       probability that a REST answer (HTTP 200) is malformed: its fields removed
                         ({} / [{}]) or its text truncated, at random
    rest_malformed_paths the REST paths rest_malformed applies to (empty: every /fapi/ and /futures/ path)
    missing_archive_days archive days (YYYY-MM-DD) that answer 404 for every data type
    bad_checksum_days    archive days whose .CHECKSUM does not match the zip
    monthly_disorder     monthly archives come out of order with duplicated rows (as Binance's can)
    withhold_agg_trades  share of aggregate ids withheld from the websocket AND REST, but present in
                         the day's archive (chosen by a hash of the id: the same ids on every path);
                         only the archive can heal them
    differ_agg_trades    share of aggregate ids whose websocket and REST price is one tick above the
                         archive's (the archive is the record: reconciliation replaces them)
    reupload_archive_days  days (YYYY-MM-DD) whose daily archives are served re-uploaded: one row
                         changed (aggTrades: a quantity, bookDepth: a depth, metrics: an open
                         interest) and so a new checksum; at run time LocalExchange.reupload_archive
                         (or POST /admin/reupload?type=&symbol=&date=) re-uploads one more time
    """

    ws_close_after: int = 0
    ws_close_random: float = 0.0
    ws_skip_agg_trades: float = 0.0
    ws_break_depth: float = 0.0
    ws_malformed: float = 0.0
    ws_stall_after: int = 0
    ws_stall_for: float = 0.0
    rest_429_rate: float = 0.0
    rest_500_rate: float = 0.0
    rest_delay: float = 0.0
    rest_malformed: float = 0.0
    rest_malformed_paths: tuple[str, ...] = ()
    missing_archive_days: tuple[str, ...] = ()
    bad_checksum_days: tuple[str, ...] = ()
    monthly_disorder: bool = False
    withhold_agg_trades: float = 0.0
    differ_agg_trades: float = 0.0
    reupload_archive_days: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("withhold_agg_trades", "differ_agg_trades"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a share from 0 to 1, got {getattr(self, name)!r}")

    def any(self) -> bool:
        return self != FaultConfig()


TIME_UNITS = ("ms", "us")
HEADER_RULES = ("auto", "always", "never")
BOOLEAN_STYLES = ("lower", "title")
BOOK_DEPTH_BANDS = (10, 12)
FUNDING_MARK_PRICES = ("value", "empty", "absent")


@dataclass
class FormatConfig:
    """Format variants seen in real Binance data (ARCHITECTURE.md, "format drift"), each off by default:
    the defaults are the USD-M formats the local exchange has always served.

    archive_time_unit    ms | us: archive epoch times (aggTrades transact_time, kline open/close times,
                         fundingRate calc_time) as 13-digit milliseconds or 16-digit microseconds (spot
                         archives since 2025; futures may follow)
    archive_headers      auto (a header line from 2022-08-11 on, as Binance's) | always | never
    archive_booleans     lower (true/false, futures files) | title (True/False, spot files)
    archive_extra_column aggTrades archives carry a trailing is_best_match column (named by the header
                         where there is one)
    spot_archive_days    days (YYYY-MM-DD) whose aggTrades archive is a spot-format file at the USD-M
                         path: no header, 8 fields (is_best_match), True/False, microsecond times
    book_depth_bands     10: bands -5..5 as integers (before 2026) | 12: "-5.00" style with +-0.20 (2026)
    metrics_empty        share of metrics rows with empty ratio fields; half of them have no open
                         interest (value) either
    archive_decimals     decimals of the metrics and bookDepth values (16: more digits than a double)
    dated_symbols        symbols served as dated (quarterly) contracts: premiumIndex and the markPrice
                         stream say nextFundingTime 0 and estimatedSettlePrice "0.00000000", funding
                         rate "", and there is no funding history
    funding_mark_price   value | empty ("") | absent: the markPrice of /fapi/v1/fundingRate rows
    """

    archive_time_unit: str = "ms"
    archive_headers: str = "auto"
    archive_booleans: str = "lower"
    archive_extra_column: bool = False
    spot_archive_days: tuple[str, ...] = ()
    book_depth_bands: int = 10
    metrics_empty: float = 0.0
    archive_decimals: int = 8
    dated_symbols: tuple[str, ...] = ()
    funding_mark_price: str = "value"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("archive_time_unit", self.archive_time_unit, TIME_UNITS),
            ("archive_headers", self.archive_headers, HEADER_RULES),
            ("archive_booleans", self.archive_booleans, BOOLEAN_STYLES),
            ("book_depth_bands", self.book_depth_bands, BOOK_DEPTH_BANDS),
            ("funding_mark_price", self.funding_mark_price, FUNDING_MARK_PRICES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
        if not 0.0 <= self.metrics_empty <= 1.0:
            raise ValueError(f"metrics_empty: expected a share from 0 to 1, got {self.metrics_empty!r}")
        if not 0 <= self.archive_decimals <= 18:
            raise ValueError(f"archive_decimals: expected 0..18, got {self.archive_decimals!r}")
        self.dated_symbols = tuple(s.strip().upper() for s in self.dated_symbols if s.strip())

    def archive_tag(self) -> str:
        """A suffix of the archive cache key naming the variants that change archive bytes ('' for none)."""
        fields = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("dated_symbols", "funding_mark_price") and v != getattr(FormatConfig(), k)
        }
        if not fields:
            return ""
        return "-fmt" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class ExchangeConfig:
    """What the local exchange simulates and how it serves it.

    symbols         contracts listed (any name; known ones get realistic precision and prices)
    seed            one seed for the whole market: same config, same data
    history_days    full days of history before today (archives, REST)
    listed_days     exchangeInfo's onboardDate this many days before today (None: the real
                    contract's listing date, e.g. 2019-09-25 for BTCUSDT)
    trades_per_day  aggregate trades per day for a BTCUSDT-like symbol (others scale by activity);
                    Binance's BTCUSDT has ~2-3 million; the default keeps tests fast
    live_rate       aggregate trades per second per symbol from server start on (None: as history)
    clock_start     the exchange clock's time at start (None: wall clock); set it in the past to
                    produce pre-2022-08-11 headerless archives or to replay recorded data
    host, port      where to listen (port 0: pick a free one)
    cache_dir       where generated archives are cached, keyed by seed and config
    weight_limit    request weight per client address per minute (X-MBX-USED-WEIGHT-1M)
    ban_seconds     how long a client that keeps sending after a 429 is answered 418
    ping_interval   seconds between server pings on each websocket
    pong_timeout    seconds a client has to answer a ping before it is dropped
    max_lifetime    seconds a websocket connection lives at most
    max_client_messages  messages per second a websocket client may send before being dropped
    max_connections_5m   websocket connections a client address may open per 5 minutes (Binance: 300);
                    beyond it the handshake is answered 429
    universe        synthetic perpetuals listed besides `symbols` (U0001USDT, ...: universe_spec)
    universe_rate   aggregate trades per second over the whole universe, spread Zipf-like (rank k
                    gets 1/k of the top's rate): a few busy contracts, most quiet
    listings_per_hour  during the run, this many new universe contracts listed an hour, and as many
                    delisted (status SETTLING in exchangeInfo, streams silent)
    replay_dir      serve this folder of data.binance.vision archives instead of generating
    faults          faults injected (FaultConfig)
    formats         format variants of real Binance data served (FormatConfig)
    """

    symbols: tuple[str, ...] = ("BTCUSDT",)
    seed: int = 1
    history_days: int = 3
    listed_days: int | None = None
    trades_per_day: int = 30_000
    live_rate: float | None = None
    clock_start: datetime | None = None
    host: str = "127.0.0.1"
    port: int = 0
    cache_dir: Path = Path(".microstructure/exchange-cache")
    weight_limit: int = 2400
    ban_seconds: float = 120.0
    ping_interval: float = 180.0
    pong_timeout: float = 10.0
    max_lifetime: float = 86_400.0
    max_client_messages: int = 10
    max_connections_5m: int = 300
    universe: int = 0
    universe_rate: float = 1000.0
    listings_per_hour: float = 0.0
    replay_dir: Path | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    formats: FormatConfig = field(default_factory=FormatConfig)

    def __post_init__(self) -> None:
        if isinstance(self.symbols, str):
            self.symbols = tuple(s for s in self.symbols.split(",") if s)
        self.symbols = tuple(s.strip().upper() for s in self.symbols)
        if not self.symbols:
            raise ValueError("at least one symbol is required")
        if self.history_days < 0:
            raise ValueError("history_days must be >= 0")
        if self.trades_per_day < 100:
            raise ValueError("trades_per_day must be >= 100")
        if self.live_rate is not None and self.live_rate <= 0:
            raise ValueError("live_rate must be > 0")
        if self.universe < 0 or self.universe > 9000:
            raise ValueError("universe must be 0..9000")
        if self.universe_rate <= 0:
            raise ValueError("universe_rate must be > 0")
        if self.listings_per_hour < 0:
            raise ValueError("listings_per_hour must be >= 0")
        self.cache_dir = Path(self.cache_dir)
        if self.replay_dir is not None:
            self.replay_dir = Path(self.replay_dir)
        if self.clock_start is not None and self.clock_start.tzinfo is None:
            self.clock_start = self.clock_start.replace(tzinfo=UTC)

    def universe_rates(self) -> dict[str, float]:
        """Live trades per second of each universe contract (Zipf: rank k gets 1/k of the top's)."""
        names = universe_symbols(self.universe)
        if not names:
            return {}
        weights = 1.0 / np.arange(1, len(names) + 1)
        rates = self.universe_rate * weights / weights.sum()
        return dict(zip(names, rates.tolist(), strict=True))

    def market_key(self, symbol: str, origin_day: int) -> str:
        """Cache key of one symbol's generated history: everything the data depends on."""
        payload = {
            "v": DATA_VERSION,
            "symbol": symbol,
            "seed": self.seed,
            "trades_per_day": self.trades_per_day,
            "origin_day": origin_day,
            "spec": asdict(symbol_spec(symbol)),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
