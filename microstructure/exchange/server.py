"""The local exchange: one aiohttp application serving REST, websockets and archives on one port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import date
from pathlib import Path
from types import TracebackType

from aiohttp import web

from microstructure.exchange import archives, rest, streams
from microstructure.exchange.config import (
    DAY_MS,
    UNIVERSE_NAME,
    ExchangeConfig,
    symbol_spec,
    universe_symbols,
)
from microstructure.exchange.market import SymbolMarket
from microstructure.exchange.ratelimit import RateLimiter

log = logging.getLogger(__name__)

EXCHANGE_KEY: web.AppKey[LocalExchange] = web.AppKey("exchange")


class LocalExchange:
    """A Binance USD-M Futures look-alike. Use as `async with LocalExchange(cfg) as ex: ex.base_url`.

    base_url   http://HOST:PORT  (REST base and data.binance.vision base alike)
    ws_url     ws://HOST:PORT    (websocket base: /ws/<stream>, /stream?streams=a/b)
    now_ms()   the exchange clock (wall clock, shifted when config.clock_start is set)
    """

    def __init__(self, config: ExchangeConfig | None = None) -> None:
        self.config = config or ExchangeConfig()
        cfg = self.config
        clock_start = cfg.clock_start
        if cfg.replay_dir is not None and clock_start is None:
            from microstructure.exchange.replay import replay_clock_start

            clock_start = replay_clock_start(cfg.replay_dir)
        wall = int(time.time() * 1000)
        self.clock_offset_ms = int(clock_start.timestamp() * 1000) - wall if clock_start else 0
        now = self.now_ms()
        self.started_ms = now
        self.today_ms = now // DAY_MS * DAY_MS
        self.origin_ms = self.today_ms - cfg.history_days * DAY_MS
        self.live_start_ms = now // 1000 * 1000
        self.markets: dict[str, SymbolMarket] = {}
        if cfg.replay_dir is not None:
            from microstructure.exchange.replay import load_replay

            self.markets = load_replay(cfg)
        else:
            for sym in cfg.symbols:
                self.markets[sym] = self._market(sym, cfg.live_rate)
            for sym, rate in cfg.universe_rates().items():
                if sym not in self.markets:
                    self.markets[sym] = self._market(sym, rate)
        self.archive_store = archives.ArchiveStore(cfg.cache_dir / "archives")
        self.limiter = RateLimiter(cfg.weight_limit, cfg.ban_seconds)
        self.hub = streams.Hub()
        self.connections: set[streams.Connection] = set()
        self.request_count = 0
        self.producer: streams.Producer | None = None
        self._producer_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._archive_locks: dict[str, asyncio.Lock] = {}
        self.reuploads: dict[str, int] = {}  # archive path -> re-uploads made at run time
        self.host = cfg.host
        self.port = cfg.port
        self.delisted: dict[str, int] = {}  # symbol -> exchange time it stopped trading (SETTLING)
        self.listed_during_run: list[str] = []
        self._listing_task: asyncio.Task[None] | None = None

    def _market(self, sym: str, rate: float | None) -> SymbolMarket:
        cfg = self.config
        return SymbolMarket(
            symbol_spec(sym),
            cfg.seed,
            cfg.trades_per_day,
            self.origin_ms,
            self.live_start_ms,
            rate,
            store_dir=cfg.cache_dir / "segments",
            store_key=cfg.market_key(sym, self.origin_ms // DAY_MS),
        )

    def status(self, sym: str) -> str:
        """exchangeInfo's status of a listed contract: TRADING, or SETTLING once delisted."""
        return "SETTLING" if sym in self.delisted else "TRADING"

    def list_contract(self) -> str:
        """List the next universe contract now (it trades from this moment, at the quietest rank's
        rate); returns its name."""
        cfg = self.config
        n = cfg.universe + len(self.listed_during_run) + 1
        sym = universe_symbols(1, start=n)[0]
        rates = cfg.universe_rates()
        rate = min(rates.values()) if rates else (cfg.live_rate or 1.0)
        market = SymbolMarket(
            symbol_spec(sym), cfg.seed, cfg.trades_per_day, self.origin_ms, self.now_ms() // 1000 * 1000, rate
        )
        market.ensure(self.now_ms() + 10_000)
        if self.producer is not None:
            self.producer.cursor[sym] = market.trade_index_after(self.now_ms())
        self.markets[sym] = market
        self.listed_during_run.append(sym)
        log.info("listed %s", sym)
        return sym

    def delist_contract(self, sym: str | None = None) -> str | None:
        """Stop a contract trading (status SETTLING, its streams silent); by default the oldest
        universe contract still trading. Returns its name (None when none is left)."""
        if sym is None:
            sym = next((s for s in self.markets if UNIVERSE_NAME.match(s) and s not in self.delisted), None)
        if sym is None:
            return None
        self.delisted[sym] = self.now_ms()
        log.info("delisted %s", sym)
        return sym

    async def _listings(self) -> None:
        """--listings-per-hour: list one contract and delist one, evenly spaced."""
        every = 3600.0 / self.config.listings_per_hour
        while True:
            await asyncio.sleep(every)
            self.list_contract()
            self.delist_contract()

    # ---- clock and urls
    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # ---- lifecycle
    def prepare(self) -> None:
        """Generate history and today (blocking; run in a thread from async code)."""
        ahead = self.now_ms() + 10_000
        for market in self.markets.values():
            market.ensure(ahead)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[rest.make_middleware(self)])
        app[EXCHANGE_KEY] = self
        app.add_routes(rest.routes(self))
        app.add_routes(streams.ws_routes(self))
        return app

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.prepare)
        self._runner = web.AppRunner(
            self.make_app(), handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.producer = streams.Producer(self)
        self._producer_task = asyncio.create_task(self.producer.run())
        if self.config.listings_per_hour > 0:
            self._listing_task = asyncio.create_task(self._listings())
        log.info("local exchange listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._listing_task is not None:
            self._listing_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listing_task
            self._listing_task = None
        if self._producer_task is not None:
            self._producer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer_task
            self._producer_task = None
        for conn in list(self.connections):
            conn.abort()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalExchange:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- archives
    def archive_available(self, ref: archives.ArchiveRef) -> bool:
        if ref.symbol not in self.markets:
            return False
        if ref.period == "daily" and ref.kind not in archives.DAILY_TYPES:
            return False
        if ref.period == "monthly" and ref.kind not in archives.MONTHLY_TYPES:
            return False
        _t0, t1 = ref.bounds()
        if t1 > self.now_ms():  # a period's archive appears only once the period has ended
            return False
        market = self.markets[ref.symbol]
        if t1 <= market.origin_ms and self.recorded_archive(ref) is None:
            return False
        if ref.kind == "fundingRate" and ref.symbol in self.config.formats.dated_symbols:
            return False  # a dated contract has no funding
        return not (ref.period == "daily" and ref.date in self.config.faults.missing_archive_days)

    def recorded_archive(self, ref: archives.ArchiveRef) -> Path | None:
        """The replay folder's file for this archive (served byte for byte), if any."""
        if self.config.replay_dir is None or ref.symbol not in self.markets:
            return None
        from microstructure.exchange.replay import original_file

        return original_file(self.markets[ref.symbol], ref)

    def archive_key(self, ref: archives.ArchiveRef) -> str:
        """Disk cache key, or '' to keep it in memory (periods that hold live-rate data)."""
        market = self.markets[ref.symbol]
        _, t1 = ref.bounds()
        if self.config.replay_dir is not None:
            return ""
        if self.config.live_rate and t1 > market.live_start_ms:
            return ""
        key = self.config.market_key(ref.symbol, market.origin_ms // DAY_MS)
        if ref.period == "monthly" and self.config.faults.monthly_disorder:
            key += "-disorder"
        return key + self.config.formats.archive_tag()

    async def archive_bytes(self, ref: archives.ArchiveRef) -> bytes | None:
        if not self.archive_available(ref):
            return None
        lock = self._archive_locks.setdefault(ref.path, asyncio.Lock())
        async with lock:
            market = self.markets[ref.symbol]
            _, t1 = ref.bounds()
            disorder = ref.period == "monthly" and self.config.faults.monthly_disorder

            original = self.recorded_archive(ref)
            if original is not None:
                return await asyncio.get_running_loop().run_in_executor(None, original.read_bytes)

            revision = self.archive_revision(ref)

            def build() -> bytes:
                market_end = market.end_ms
                if market_end < t1:
                    raise RuntimeError("market does not cover the archive period yet")
                return archives.build_csv(market, ref, disorder, self.config.formats, revision)

            return await asyncio.get_running_loop().run_in_executor(
                None, self.archive_store.get, self.archive_key(ref), ref, build, revision
            )

    def archive_revision(self, ref: archives.ArchiveRef) -> int:
        """How many times this archive was re-uploaded (faults.reupload_archive_days counts one)."""
        if ref.period != "daily":
            return 0
        configured = 1 if ref.date in self.config.faults.reupload_archive_days else 0
        return configured + self.reuploads.get(ref.path, 0)

    def reupload_archive(self, kind: str, symbol: str, day: date | str) -> int:
        """Replace one day's archive by a re-upload with one row changed (a new checksum), as Binance
        does; the revision now served. Raises KeyError for an unknown symbol or type."""
        d = day if isinstance(day, str) else day.isoformat()
        ref = archives.ArchiveRef("daily", kind, symbol.upper(), d)
        if ref.symbol not in self.markets or kind not in archives.DAILY_TYPES:
            raise KeyError(f"{kind} {symbol}")
        self.reuploads[ref.path] = self.reuploads.get(ref.path, 0) + 1
        return self.archive_revision(ref)

    def checksum_broken(self, ref: archives.ArchiveRef) -> bool:
        return ref.period == "daily" and ref.date in self.config.faults.bad_checksum_days

    async def archive_checksum(self, ref: archives.ArchiveRef, data: bytes, filename: str) -> bytes:
        """The .CHECKSUM of an archive whose zip is `data`: the replay folder's recorded sibling file
        as it is when there is one, else `<sha256>  <filename>`; a wrong digest under the fault."""
        if self.checksum_broken(ref):
            return archives.checksum_text(data + b"\0corrupt", filename).encode()
        if self.config.replay_dir is not None:
            from microstructure.exchange.replay import original_checksum

            recorded = original_checksum(self.markets[ref.symbol], ref)
            if recorded is not None:
                return await asyncio.get_running_loop().run_in_executor(None, recorded.read_bytes)
        return archives.checksum_text(data, filename).encode()

    # ---- helpers for tests and tools
    def history_dates(self) -> list[date]:
        return [archives.ms_date(self.origin_ms + i * DAY_MS) for i in range(self.config.history_days)]

    def archive_url(self, kind: str, symbol: str, day: date | str, period: str = "daily") -> str:
        d = day if isinstance(day, str) else (day.isoformat() if period == "daily" else day.strftime("%Y-%m"))
        return f"{self.base_url}/{archives.ArchiveRef(period, kind, symbol, d).path}"


async def serve_forever(config: ExchangeConfig, ready: asyncio.Event | None = None) -> None:
    """Run until cancelled (the CLI cancels on SIGINT/SIGTERM)."""
    async with LocalExchange(config) as ex:
        print(f"local exchange: REST and archives {ex.base_url}  websocket {ex.ws_url}", flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()


def default_cache_dir() -> Path:
    return Path(".microstructure/exchange-cache")


class ExchangeThread:
    """Run a LocalExchange on its own event loop in a background thread (for synchronous code/tests).

    with ExchangeThread(ExchangeConfig(...)) as ex:
        requests.get(ex.base_url + "/fapi/v1/ping")
    """

    def __init__(self, config: ExchangeConfig | None = None) -> None:
        import threading

        self.exchange = LocalExchange(config)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="local-exchange", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.exchange.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.exchange.stop())
        self.loop.close()

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run fn(*args) on the exchange's loop thread and return its result."""
        import concurrent.futures

        fut: concurrent.futures.Future[object] = concurrent.futures.Future()

        def go() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout=30)

    def __enter__(self) -> LocalExchange:
        self._thread.start()
        self._ready.wait(timeout=300)
        if self._error is not None:
            raise self._error
        return self.exchange

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
