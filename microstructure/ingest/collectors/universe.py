"""`--all-symbols`: the universe a collector follows, read from the exchange.

Every USD-M perpetual exchangeInfo lists with status TRADING (a contract SETTLING, PENDING_TRADING,
BREAK or delivering is not in it), filtered by `--quote` (its quoteAsset), `--exclude` and
`--top N` (the N largest 24 h quote volumes of GET /fapi/v1/ticker/24hr). Live, it is read again
every `--universe-interval` seconds and the live set follows it: a listing is added, a delisted or
settling contract is dropped (follow.LiveSet says so once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from microstructure.ingest.binance.rest import BinanceRest
from microstructure.ingest.binance.tickers import quote_volumes
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

DEFAULT_UNIVERSE_INTERVAL = 45.0  # a listing is collected within a minute (a read, a heartbeat, a start)


@dataclass(frozen=True)
class UniverseFilter:
    quote: str | None = None  # e.g. USDT
    top: int | None = None  # the N largest by 24 h quote volume
    exclude: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> str:
        parts = ["every TRADING USD-M perpetual"]
        if self.quote:
            parts.append(f"quoted in {self.quote}")
        if self.top:
            parts.append(f"top {self.top} by 24 h quote volume")
        if self.exclude:
            parts.append(f"except {', '.join(sorted(self.exclude))}")
        return ", ".join(parts)


async def read_universe(rest: BinanceRest, flt: UniverseFilter) -> list[str]:
    """The symbols of the universe now, sorted."""
    info = await rest.exchange_info()
    names = [
        str(s["symbol"]).upper()
        for s in info.get("symbols", [])
        if s.get("status") == "TRADING"
        and s.get("contractType") == "PERPETUAL"
        and (flt.quote is None or str(s.get("quoteAsset", "")).upper() == flt.quote)
        and str(s["symbol"]).upper() not in flt.exclude
    ]
    if flt.top is not None:
        volumes = await quote_volumes(rest)
        names = sorted(names, key=lambda s: (-volumes.get(s, 0.0), s))[: flt.top]
    return sorted(names)


async def follow_universe(
    rest: BinanceRest,
    flt: UniverseFilter,
    interval: float,
    stop: asyncio.Event,
    current: list[str],
    on_change: Callable[[list[str], list[str], list[str]], Awaitable[None]],
) -> None:
    """Every `interval` s until `stop`: read the universe; when it changed, `on_change(new, added,
    removed)`. A failed read keeps the last universe (said in the log) and is tried at the next round."""
    known = list(current)
    while not await sleep_or_stop(stop, interval):
        try:
            new = await read_universe(rest, flt)
        except Exception as exc:  # network, 5xx, a malformed reply: the set stays as it is
            log.warning(
                "universe not read; keeping the last one", extra={"error": f"{type(exc).__name__}: {exc}"}
            )
            continue
        added = [s for s in new if s not in known]
        removed = [s for s in known if s not in new]
        if added or removed:
            log.info(
                "the universe changed",
                extra={"listed": added, "no_longer_listed": removed, "symbols": len(new)},
            )
            known = new
            await on_change(new, added, removed)
