"""Request weights per client address per minute, as Binance USD-M Futures counts them.

A request over the limit answers 429 with Retry-After (seconds to the end of the minute); a client
that sends again in the same minute after its 429 is banned: 418 with Retry-After until the ban ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_MS = 60_000


def depth_weight(limit: int) -> int:
    if limit <= 50:
        return 2
    if limit <= 100:
        return 5
    if limit <= 500:
        return 10
    return 20


# weights from Binance's USD-M Futures API documentation
WEIGHTS: dict[str, int] = {
    "/fapi/v1/ping": 1,
    "/fapi/v1/time": 1,
    "/fapi/v1/exchangeInfo": 1,
    "/fapi/v1/aggTrades": 20,
    "/fapi/v1/depth": 5,  # by limit, see depth_weight
    "/fapi/v1/premiumIndex": 1,  # 10 without a symbol
    "/fapi/v1/fundingRate": 1,
    "/fapi/v1/openInterest": 1,
    "/futures/data/openInterestHist": 1,
    "/fapi/v1/ticker/24hr": 1,  # 40 without a symbol
}


@dataclass
class ClientUsage:
    window: int = -1
    used: int = 0
    rejected: bool = False  # answered 429 in this window
    banned_until: int = 0  # ms


@dataclass
class Verdict:
    status: int  # 200, 429 or 418
    used: int
    retry_after: int  # seconds, for 429/418
    banned_until: int = 0


class RateLimiter:
    def __init__(self, limit: int, ban_seconds: float) -> None:
        self.limit = limit
        self.ban_ms = int(ban_seconds * 1000)
        self.clients: dict[str, ClientUsage] = {}

    def check(self, client: str, weight: int, now_ms: int) -> Verdict:
        u = self.clients.setdefault(client, ClientUsage())
        window = now_ms // WINDOW_MS
        if window != u.window:
            u.window, u.used, u.rejected = window, 0, False
        if u.banned_until > now_ms:
            return Verdict(418, u.used, max(1, math.ceil((u.banned_until - now_ms) / 1000)), u.banned_until)
        if u.used + weight > self.limit:
            if u.rejected:
                u.banned_until = now_ms + self.ban_ms
                return Verdict(418, u.used, max(1, math.ceil(self.ban_ms / 1000)), u.banned_until)
            u.rejected = True
            return Verdict(429, u.used, max(1, math.ceil(((window + 1) * WINDOW_MS - now_ms) / 1000)))
        u.used += weight
        return Verdict(200, u.used, 0)

    def used(self, client: str, now_ms: int) -> int:
        u = self.clients.get(client)
        if u is None or u.window != now_ms // WINDOW_MS:
            return 0
        return u.used
