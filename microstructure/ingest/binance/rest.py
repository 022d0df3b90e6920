"""Async REST client for Binance USD-M Futures (or the local exchange), polite about request weight.

Rate limits (per IP, per calendar minute of the server clock):
- the budget: `weight_budget_per_min` when given, else 1200 until exchangeInfo has been read, then
  SAFETY_MARGIN (80 %) of the REQUEST_WEIGHT limit its `rateLimits` announce; a given budget is never
  above that limit;
- every response carries X-MBX-USED-WEIGHT-1M: the client keeps the server's count of the current
  minute (never below its own reservations) and, when a request's weight would take the minute past
  its share of the budget, waits for the next minute boundary of the SERVER clock (offset learnt from
  `server_time()`) before sending it;
- requests are scheduled by priority, not raced: HIGH (a depth snapshot a diff book waits on) may use
  the whole budget; NORMAL (polls, metadata, historical pages) too; LOW (live gap fills, where one
  `fromId` page serves every gap within its 1,000 ids) leaves LOW_RESERVE of it free and is paced
  evenly over the minute, so a burst of fills never makes a resync wait for the next minute; and
  the other way round, while a LOW request waits, HIGH and NORMAL stop LOW_GUARANTEE of the budget
  short of the LOW share, so a storm of resyncs or polls never keeps a gap fill out for minutes;
- 429: the Retry-After header (seconds) blocks every request of this client for that long, then the
  request is retried (counted in `stats.rate_limited`);
- 418: the IP is banned; `IpBanned` is raised with the ban's length and nothing is sent until it ends;
- network errors (refused, reset, timed out, a body cut short) and 5xx are retried with jittered
  exponential backoff (`max_retries`); so are, with `retry_malformed` (the historical collectors),
  HTTP 200 answers that are empty, truncated, not JSON or not of the expected shape (each endpoint
  decodes its reply into checked rows at this boundary: a missing key is a `MalformedReply`, never a
  KeyError). Every retry is told to `on_retry` (a `RetryNote`: the collectors record it in
  ingest_events). Given up: `RetriesExhausted` (`Unreachable` when no answer came at all);
- other 4xx answers carrying Binance's {"code", "msg"} raise `BinanceError(code, msg)`.

What a caller should make of an error (`classify`): "banned" (418: exit code 3), "not_exchange"
(an answer that is not Binance's JSON: a wrong URL), "refused" (a Binance error body), "failed" (kept
failing or unreachable after every retry: the day or run is incomplete, exit code 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa

from microstructure.ingest.records import AGG_TRADES

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
AGG_TRADES_MAX_LIMIT = 1000

# Request weights of Binance's USD-M Futures API documentation.
WEIGHTS: dict[str, int] = {
    "/fapi/v1/ping": 1,
    "/fapi/v1/time": 1,
    "/fapi/v1/exchangeInfo": 1,
    "/fapi/v1/aggTrades": 20,
    "/fapi/v1/premiumIndex": 1,
    "/fapi/v1/fundingRate": 1,
    "/fapi/v1/openInterest": 1,
    "/futures/data/openInterestHist": 1,  # documented as 0; counted as 1 to stay on the safe side
}
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)

# Request priorities under the weight budget: a depth resync first, polls next, bulk gap fills last.
HIGH, NORMAL, LOW = 0, 1, 2
PRIORITY_NAMES = {HIGH: "high", NORMAL: "normal", LOW: "low"}
SAFETY_MARGIN = 0.8  # of the exchange's announced weight limit, for the default budget
LOW_RESERVE = 0.25  # share of the budget LOW requests leave to HIGH and NORMAL ones
LOW_GUARANTEE = 0.1  # share below the LOW cap HIGH and NORMAL leave while a LOW request waits
DEFAULT_BUDGET = 1200  # before exchangeInfo tells the real limit
BACKOFF_BASE = 0.5  # seconds: the n-th retry waits uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**n))
BACKOFF_MAX = 30.0
MAX_RETRIES = 6


def depth_weight(limit: int) -> int:
    """/fapi/v1/depth weight by limit: 2 up to 50 levels, 5 for 100, 10 for 500, 20 for 1000."""
    if limit <= 50:
        return 2
    if limit <= 100:
        return 5
    if limit <= 500:
        return 10
    return 20


class RestError(RuntimeError):
    """Base of the errors this client raises."""


class BinanceError(RestError):
    """The exchange refused the request with a Binance error body {"code": ..., "msg": ...}."""

    def __init__(self, code: int | None, msg: str, status: int = 400, path: str = "") -> None:
        self.code, self.msg, self.status, self.path = code, msg, status, path
        where = f" ({path})" if path else ""
        super().__init__(f"Binance error {code}: {msg} [HTTP {status}]{where}")


class IpBanned(RestError):
    """HTTP 418: this IP is banned for `retry_after` seconds. Never retried."""

    def __init__(self, retry_after: float, until_ms: int | None, msg: str = "") -> None:
        self.retry_after = retry_after
        self.until_ms = until_ms
        until = (
            datetime.fromtimestamp(until_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if until_ms
            else "unknown"
        )
        text = (
            f"IP banned by the exchange (HTTP 418) for {retry_after:g} s, until {until}; "
            "not retrying: wait for the ban to end and lower --weight-budget"
        )
        if msg:
            text += f" (exchange said: {msg})"
        super().__init__(text)


class MalformedReply(RestError):
    """HTTP 200 whose body is not JSON (or not of the expected shape); `text` is the body as received (decoded, cut at 2000 characters)."""

    def __init__(self, path: str, body: bytes, why: str = "invalid JSON") -> None:
        self.path = path
        self.text = body[:2000].decode("utf-8", "replace")
        super().__init__(f"GET {path}: {why} in the answer: {body[:200]!r}")


class NotAnExchange(MalformedReply):
    """The answer is not JSON and not labelled as JSON (an HTML page, a proxy's error page): the URL
    is not a Binance-compatible API. Says the status and content type."""

    def __init__(self, url: str, path: str, status: int, content_type: str, body: bytes) -> None:
        super().__init__(path, body, "not JSON")
        self.status, self.content_type = status, content_type
        snippet = " ".join(body[:80].decode("utf-8", "replace").split())
        RestError.__init__(
            self,
            f"{url} answered HTTP {status} {content_type or 'without a content type'}, not Binance's JSON "
            f"({snippet!r}): is this a Binance USD-M Futures API (or the local exchange)?",
        )


class RetriesExhausted(RestError):
    """The request kept failing (network errors, 5xx, 429s or malformed answers) beyond the retry limits."""


class Unreachable(RetriesExhausted):
    """No answer at all after every retry (connection refused or reset, timeouts): the exchange is
    not reachable now, so the rest of a run would fail the same way."""


class DecodeError(ValueError):
    """A reply decoded but not of the shape its endpoint promises (a missing key, a wrong type)."""


@dataclass(frozen=True)
class RetryNote:
    """One retried request, for `on_retry` (and ingest_events `rest_retry`)."""

    path: str
    reason: str
    attempt: int
    delay_s: float

    def as_detail(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason[:300], "attempt": self.attempt,
                "retry_in_s": round(self.delay_s, 2)}  # fmt: skip


def classify(exc: BaseException) -> str:
    """banned | not_exchange | refused | failed (see the module doc), for exit codes and reports."""
    if isinstance(exc, IpBanned):
        return "banned"
    if isinstance(exc, NotAnExchange):
        return "not_exchange"
    if isinstance(exc, BinanceError):
        return "refused"
    return "failed"


def _need(obj: Any, kind: type, what: str) -> Any:
    if not isinstance(obj, kind):
        raise DecodeError(f"{what}: expected a {kind.__name__}, got {type(obj).__name__}")
    return obj


def _int_field(row: Any, key: str, what: str) -> int:
    if not isinstance(row, dict):
        raise DecodeError(f"{what}: expected an object per row, got {type(row).__name__}")
    if key not in row:
        raise DecodeError(f"{what}: row without {key!r}: {json.dumps(row)[:120]}")
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, int | str) or not str(v).lstrip("-").isdigit():
        raise DecodeError(f"{what}: {key!r} is not an integer: {v!r}")
    return int(v)


def _num_field(row: dict[str, Any], key: str, what: str) -> float:
    if key not in row:
        raise DecodeError(f"{what}: row without {key!r}: {json.dumps(row)[:120]}")
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise DecodeError(f"{what}: {key!r} is not a number: {row[key]!r}") from None


@dataclass(frozen=True)
class AggTradeRef:
    """The id and time of one aggregate trade (what the probes and first-id searches read)."""

    agg_id: int
    ts_ms: int


def decode_agg_refs(obj: Any) -> list[AggTradeRef]:
    rows = _need(obj, list, "aggTrades")
    return [AggTradeRef(_int_field(r, "a", "aggTrades"), _int_field(r, "T", "aggTrades")) for r in rows]


def decode_agg_rows(obj: Any) -> list[dict[str, Any]]:
    """aggTrades rows with every field of the AGG_TRADES table present (types are checked when the
    table is built: agg_trades_table)."""
    rows = _need(obj, list, "aggTrades")
    for r in rows:
        if not isinstance(r, dict):
            raise DecodeError(f"aggTrades: expected an object per row, got {type(r).__name__}")
        if not r.keys() >= AGG_KEYS:
            raise DecodeError(f"aggTrades: row without {sorted(AGG_KEYS - r.keys())}: {json.dumps(r)[:120]}")
    return rows  # type: ignore[no-any-return]


AGG_KEYS = frozenset("apqflTm")


def decode_server_time(obj: Any) -> int:
    return _int_field(obj, "serverTime", "time")


def decode_exchange_info(obj: Any) -> dict[str, Any]:
    info = _need(obj, dict, "exchangeInfo")
    symbols = _need(info.get("symbols"), list, "exchangeInfo.symbols")
    for s in symbols:
        if not isinstance(s, dict) or not isinstance(s.get("symbol"), str):
            raise DecodeError(f"exchangeInfo.symbols: an entry without 'symbol': {json.dumps(s)[:120]}")
    return info  # type: ignore[no-any-return]


def decode_funding_rows(obj: Any) -> list[dict[str, Any]]:
    """fundingRate rows: fundingTime an integer, fundingRate a number (markPrice may be "" or absent)."""
    rows = _need(obj, list, "fundingRate")
    for r in rows:
        _int_field(r, "fundingTime", "fundingRate")
        _num_field(r, "fundingRate", "fundingRate")
    return rows  # type: ignore[no-any-return]


def decode_oi_hist_rows(obj: Any) -> list[dict[str, Any]]:
    """openInterestHist rows: timestamp an integer, sumOpenInterest a number."""
    rows = _need(obj, list, "openInterestHist")
    for r in rows:
        _int_field(r, "timestamp", "openInterestHist")
        _num_field(r, "sumOpenInterest", "openInterestHist")
    return rows  # type: ignore[no-any-return]


@dataclass
class RestStats:
    requests: int = 0  # HTTP requests sent (every attempt)
    weight_used: int = 0  # weight of the requests the exchange accepted
    rate_limited: int = 0  # 429 answers
    retries: int = 0  # attempts repeated after a network error, 5xx or 429
    budget_waits: int = 0  # times a request waited for the next minute to stay under the budget
    budget_wait_s: float = 0.0
    waits_by_priority: dict[str, float] = field(default_factory=dict)  # seconds waited, by priority
    max_used_weight_1m: int = 0  # highest X-MBX-USED-WEIGHT-1M seen
    last_used_weight_1m: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_AGG_EMPTY = AGG_TRADES.empty_table()


def agg_trades_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Binance aggTrades JSON rows -> an AGG_TRADES table (columns built with one pass per field)."""
    if not rows:
        return _AGG_EMPTY
    n = len(rows)
    a = np.fromiter((r["a"] for r in rows), dtype=np.int64, count=n)
    ts = np.fromiter((r["T"] for r in rows), dtype=np.int64, count=n)
    first = np.fromiter((r["f"] for r in rows), dtype=np.int64, count=n)
    last = np.fromiter((r["l"] for r in rows), dtype=np.int64, count=n)
    maker = np.fromiter((r["m"] for r in rows), dtype=np.bool_, count=n)
    # Decimal strings -> float64 with Arrow's correctly rounded parser (same as the archive path).
    price = pa.array([r["p"] for r in rows], pa.string()).cast(pa.float64())
    qty = pa.array([r["q"] for r in rows], pa.string()).cast(pa.float64())
    return pa.Table.from_arrays(
        [
            pa.array(a),
            pa.array(ts),
            price,
            qty,
            pa.array(first),
            pa.array(last),
            pa.array(maker),
            pa.nulls(n, pa.int64()),
        ],
        schema=AGG_TRADES,
    )


def decode_agg_table(obj: Any) -> pa.Table:
    """aggTrades JSON -> an AGG_TRADES table; a missing field or a wrong type is a DecodeError."""
    rows = _need(obj, list, "aggTrades")
    try:
        return agg_trades_table(rows)
    except (KeyError, TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise DecodeError(f"aggTrades: {type(exc).__name__}: {exc}") from exc


class BinanceRest:
    """`async with BinanceRest(settings.rest_url) as rest: table = await rest.agg_trades("BTCUSDT")`."""

    def __init__(
        self,
        base_url: str,
        *,
        weight_budget_per_min: int | None = None,
        max_retries: int | None = None,
        max_rate_limited: int = 30,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        retry_malformed: bool = False,
        on_retry: Callable[[RetryNote], None] | None = None,
    ) -> None:
        if weight_budget_per_min is not None and weight_budget_per_min < 20:
            raise ValueError(f"weight budget: expected at least 20 per minute, got {weight_budget_per_min}")
        self.base_url = base_url.rstrip("/")
        self.requested_budget = weight_budget_per_min  # None: from exchangeInfo
        self.budget = weight_budget_per_min or DEFAULT_BUDGET
        self.exchange_limit: int | None = None  # REQUEST_WEIGHT per minute announced by exchangeInfo
        self.max_retries = MAX_RETRIES if max_retries is None else max_retries
        self.max_rate_limited = max_rate_limited
        self.backoff_base = BACKOFF_BASE if backoff_base is None else backoff_base
        self.backoff_max = BACKOFF_MAX if backoff_max is None else backoff_max
        self.retry_malformed = retry_malformed  # empty/truncated/ill-shaped 200 answers retried too
        self.on_retry = on_retry
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.stats = RestStats()
        self.clock_offset_ms = 0  # server clock - local clock, learnt from server_time()
        self._session = session
        self._own_session = session is None
        self._window = -1  # server minute the weight count refers to
        self._used = 0  # weight used (server's count or our reservations, whichever is higher)
        self._blocked_until = 0.0  # monotonic time before which nothing is sent (after a 429)
        self._banned: IpBanned | None = None
        self._banned_until_mono = 0.0
        self._low_tokens = float("inf")  # LOW requests are paced: weight they may send now (full at first)
        self._low_refill = time.monotonic()
        # LOW requests waiting: for their pace (they go within this minute), and for the next minute
        self._low_paced = 0
        self._low_next: dict[int, int] = {}  # server minute waited for -> LOW requests waiting for it

    # ---- lifecycle
    async def __aenter__(self) -> BinanceRest:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._own_session = True

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        if self._own_session:
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("BinanceRest is not open: use `async with BinanceRest(...)`")
        return self._session

    # ---- clock and weight
    def server_now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def used_weight(self) -> int:
        """Weight of the current server minute, as far as this client knows."""
        return self._used if self._window == self.server_now_ms() // MINUTE_MS else 0

    def fits_now(self, weight: int, priority: int = NORMAL) -> bool:
        """Whether a request of `weight` would go without waiting for budget (a stop asks before
        spending its last seconds on a request that would wait for the next minute)."""
        if self._banned is not None and time.monotonic() < self._banned_until_mono:
            return False
        if self._blocked_until > time.monotonic():
            return False
        cap = self.budget if priority < LOW else self._low_cap()
        return self.used_weight() + weight <= cap

    def learn_limits(self, info: Any) -> None:
        """Take the REQUEST_WEIGHT limit of exchangeInfo's `rateLimits` (per minute): the budget
        becomes SAFETY_MARGIN of it, or the requested budget when that is lower."""
        if not isinstance(info, dict):
            return
        for rl in info.get("rateLimits") or []:
            if not isinstance(rl, dict) or rl.get("rateLimitType") != "REQUEST_WEIGHT":
                continue
            try:
                limit, num = int(rl["limit"]), int(rl.get("intervalNum", 1))
            except (KeyError, TypeError, ValueError):
                continue
            per_min = {"SECOND": 60 / max(1, num), "MINUTE": 1 / max(1, num), "HOUR": 1 / (60 * max(1, num)),
                       "DAY": 1 / (1440 * max(1, num))}.get(str(rl.get("interval")))  # fmt: skip
            if per_min is None or limit <= 0:
                continue
            self.exchange_limit = int(limit * per_min)
            auto = max(20, int(self.exchange_limit * SAFETY_MARGIN))
            self.budget = min(self.requested_budget, self.exchange_limit) if self.requested_budget else auto
            return

    def _low_cap(self) -> int:
        return max(20, int(self.budget * (1 - LOW_RESERVE)))

    async def _reserve(self, weight: int, priority: int = NORMAL) -> int:
        """Wait until the request fits its share of the budget (and any 429 back-off has passed);
        return its window. No lock: nothing is awaited between the check and the reservation."""
        started = time.monotonic()
        waited = False
        low_wait: tuple[str, int] | None = None  # what this LOW request waits for, while it waits

        def wait_as(what: tuple[str, int] | None) -> None:
            nonlocal low_wait
            if low_wait == what:
                return
            if low_wait is not None:
                if low_wait[0] == "paced":
                    self._low_paced -= 1
                else:
                    self._low_next[low_wait[1]] -= 1
                    if not self._low_next[low_wait[1]]:
                        del self._low_next[low_wait[1]]
            if what is not None:
                if what[0] == "paced":
                    self._low_paced += 1
                else:
                    self._low_next[what[1]] = self._low_next.get(what[1], 0) + 1
            low_wait = what

        try:
            while True:
                if self._banned is not None and time.monotonic() < self._banned_until_mono:
                    raise self._banned
                wait = self._blocked_until - time.monotonic()
                if wait > 0:
                    waited = True
                    await asyncio.sleep(wait)
                    continue
                now = self.server_now_ms()
                window = now // MINUTE_MS
                if window != self._window:
                    self._window, self._used = window, 0
                cap = self.budget if priority < LOW else self._low_cap()
                if priority < LOW and (self._low_paced or any(w <= window for w in self._low_next)):
                    cap = max(weight, int(self._low_cap() - LOW_GUARANTEE * self.budget))
                if priority == LOW:
                    # paced: the LOW share of the budget spread over the minute, small bursts allowed
                    rate = self._low_cap() / 60.0
                    mono = time.monotonic()
                    burst = max(float(weight), 0.25 * self._low_cap())
                    self._low_tokens = min(burst, self._low_tokens + (mono - self._low_refill) * rate)
                    self._low_refill = mono
                    if self._low_tokens < weight:
                        # it goes this minute if the minute has room for it, else in the next
                        fits = self._used + weight <= self._low_cap()
                        wait_as(("paced", window) if fits else ("next", window + 1))
                        waited = True
                        await asyncio.sleep((weight - self._low_tokens) / rate)
                        continue
                if self._used + weight <= cap or self._used == 0:
                    self._used += weight
                    if priority == LOW:
                        self._low_tokens -= weight
                    return window
                if priority == LOW:
                    wait_as(("next", window + 1))  # HIGH and NORMAL leave it its share from then on
                # Sleep to the next minute of the server clock (+ a margin for clock error).
                sleep_s = ((window + 1) * MINUTE_MS - now) / 1000 + 0.25
                self.stats.budget_waits += 1
                waited = True
                log.info(
                    "weight %d + %d would exceed the %s budget of %d/min: waiting %.1f s for the next minute",
                    self._used,
                    weight,
                    PRIORITY_NAMES.get(priority, "normal"),
                    cap,
                    sleep_s,
                )
                await asyncio.sleep(sleep_s)
        finally:
            wait_as(None)
            if waited:
                spent = time.monotonic() - started
                self.stats.budget_wait_s += spent
                name = PRIORITY_NAMES.get(priority, "normal")
                self.stats.waits_by_priority[name] = self.stats.waits_by_priority.get(name, 0.0) + spent

    def summary_line(self) -> str:
        """Requests, weight and the time requests waited for budget (by priority), for run summaries."""
        st = self.stats
        waits = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(st.waits_by_priority.items()))
        limit = f" (exchange limit {self.exchange_limit})" if self.exchange_limit else ""
        return (
            f"REST: {st.requests} requests, weight {st.weight_used}, budget {self.budget}/min{limit}; "
            f"waited for budget: {waits or 'never'}; {st.rate_limited} answered 429"
        )

    def _observe(self, headers: Any, window: int) -> None:
        raw = headers.get("X-MBX-USED-WEIGHT-1M") or headers.get("x-mbx-used-weight-1m")
        if raw is None:
            return
        try:
            used = int(raw)
        except ValueError:
            return
        self.stats.last_used_weight_1m = used
        self.stats.max_used_weight_1m = max(self.stats.max_used_weight_1m, used)
        # Apply it only when the answer is known to belong to the minute we are counting.
        if window == self._window == self.server_now_ms() // MINUTE_MS:
            self._used = max(self._used, used)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    def _tell(self, note: RetryNote) -> None:
        if self.on_retry is not None:
            try:
                self.on_retry(note)
            except Exception:  # a report hook never breaks a request
                log.exception("on_retry hook failed")

    async def _retry_wait(self, path: str, why: str, attempt: int) -> None:
        """The backoff before retry `attempt` of `path` (logged, counted, told to on_retry)."""
        delay = self._backoff(attempt)
        self.stats.retries += 1
        log.warning("GET %s failed (%s); retry %d in %.2f s", path, why, attempt, delay)
        self._tell(RetryNote(path, why, attempt, delay))
        await asyncio.sleep(delay)

    # ---- the request loop
    async def request(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        weight: int | None = None,
        priority: int = NORMAL,
        decode: Callable[[Any], Any] | None = None,
    ) -> Any:
        """GET `path` with `params`; the parsed JSON body, through `decode` when given (its
        DecodeError/KeyError/TypeError/ValueError make the answer malformed). Retries, weights and
        errors as described above."""
        if weight is None:
            weight = WEIGHTS.get(path, 1)
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        url = self.base_url + path
        failures = 0
        limited = 0
        while True:
            window = await self._reserve(weight, priority)
            self.stats.requests += 1
            try:
                async with self.session.get(url, params=query, timeout=self.timeout) as resp:
                    self._observe(resp.headers, window)
                    status = resp.status
                    body = await resp.read()
                    headers = resp.headers
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                failures += 1
                why = f"{type(exc).__name__}: {exc}"
                if failures > self.max_retries:
                    raise Unreachable(f"GET {url}: {why} (gave up after {failures} attempts)") from exc
                await self._retry_wait(path, why, failures)
                continue
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if status == 200:
                self.stats.weight_used += weight
                try:
                    obj = json.loads(body)
                except ValueError as exc:
                    if content_type and "json" not in content_type:
                        raise NotAnExchange(url, path, status, content_type, body) from exc
                    bad = MalformedReply(
                        path, body, "an empty answer" if not body.strip() else "invalid JSON"
                    )
                else:
                    if decode is None:
                        return obj
                    try:
                        return decode(obj)
                    except (DecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
                        bad = MalformedReply(path, body, f"{type(exc).__name__}: {exc}")
                if not self.retry_malformed:
                    raise bad
                failures += 1
                why = str(bad)[len(f"GET {path}: ") :]
                if failures > self.max_retries:
                    raise RetriesExhausted(f"{bad} (gave up after {failures} attempts)") from bad
                await self._retry_wait(path, why, failures)
                continue
            if status == 418:
                retry_after = _retry_after(headers, default=120.0)
                until_ms = self.server_now_ms() + int(retry_after * 1000)
                code, msg = _error_body(body)
                self._banned = IpBanned(retry_after, until_ms, msg)
                self._banned_until_mono = time.monotonic() + retry_after
                log.error("%s", self._banned)
                raise self._banned
            if status == 429:
                self.stats.rate_limited += 1
                limited += 1
                retry_after = _retry_after(headers, default=60.0)
                # Nothing at all is sent before Retry-After has passed: sending again is what gets a ban.
                self._blocked_until = max(self._blocked_until, time.monotonic() + retry_after + 0.05)
                if limited > self.max_rate_limited:
                    raise RetriesExhausted(f"GET {path}: still rate limited (429) after {limited} waits")
                self.stats.retries += 1
                log.warning("GET %s: 429 rate limited; waiting %.1f s (Retry-After)", path, retry_after)
                self._tell(RetryNote(path, "HTTP 429 (rate limited)", limited, retry_after))
                continue
            if status >= 500:
                failures += 1
                if failures > self.max_retries:
                    raise RetriesExhausted(f"GET {url}: HTTP {status} (gave up after {failures} attempts)")
                await self._retry_wait(path, f"HTTP {status}", failures)
                continue
            code, msg = _error_body(body)
            if code is None and content_type and "json" not in content_type:
                raise NotAnExchange(url, path, status, content_type, body)
            raise BinanceError(code, msg, status, path)

    # ---- endpoints
    async def ping(self) -> None:
        await self.request("/fapi/v1/ping")

    async def server_time(self) -> int:
        """Server time in ms; also learns the offset of the server clock (minute windows follow it)."""
        t0 = time.time()
        server = await self.request("/fapi/v1/time", decode=decode_server_time)
        t1 = time.time()
        self.clock_offset_ms = server - int((t0 + t1) / 2 * 1000)
        return server

    async def exchange_info(self) -> dict[str, Any]:
        """exchangeInfo; its `rateLimits` set the weight budget (learn_limits)."""
        info = await self.request("/fapi/v1/exchangeInfo", decode=decode_exchange_info)
        self.learn_limits(info)
        return info  # type: ignore[no-any-return]

    async def symbols(self, *, trading_only: bool = False) -> dict[str, dict[str, Any]]:
        """Listed contracts by name (exchangeInfo.symbols)."""
        info = await self.exchange_info()
        return {
            s["symbol"]: s
            for s in info.get("symbols", [])
            if not trading_only or s.get("status") == "TRADING"
        }

    @staticmethod
    def _agg_params(
        symbol: str, from_id: int | None, start_ms: int | None, end_ms: int | None, limit: int
    ) -> dict[str, Any]:
        if not 1 <= limit <= AGG_TRADES_MAX_LIMIT:
            raise ValueError(f"limit: expected 1..{AGG_TRADES_MAX_LIMIT}, got {limit}")
        if from_id is not None and (start_ms is not None or end_ms is not None):
            raise ValueError("fromId cannot be combined with startTime/endTime")
        if start_ms is not None and end_ms is not None and not 0 <= end_ms - start_ms < HOUR_MS:
            raise ValueError("startTime..endTime must be a window shorter than one hour")
        return {"symbol": symbol, "fromId": from_id, "startTime": start_ms, "endTime": end_ms, "limit": limit}

    async def agg_trades_raw(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = AGG_TRADES_MAX_LIMIT,
        priority: int = NORMAL,
    ) -> list[dict[str, Any]]:
        """aggTrades rows as decoded JSON objects, each with every field (decode_agg_rows)."""
        params = self._agg_params(symbol, from_id, start_ms, end_ms, limit)
        return await self.request(  # type: ignore[no-any-return]
            "/fapi/v1/aggTrades", params, priority=priority, decode=decode_agg_rows
        )

    async def agg_trade_refs(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 1,
        priority: int = NORMAL,
    ) -> list[AggTradeRef]:
        """Ids and times of aggregate trades (probes: the first trade of a window, the next id)."""
        params = self._agg_params(symbol, from_id, start_ms, end_ms, limit)
        return await self.request(  # type: ignore[no-any-return]
            "/fapi/v1/aggTrades", params, priority=priority, decode=decode_agg_refs
        )

    async def agg_trades(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = AGG_TRADES_MAX_LIMIT,
        priority: int = NORMAL,
    ) -> pa.Table:
        """One page of aggregate trades as an AGG_TRADES table (recv_ms null: these did not come live).
        A reply whose rows lack a field or carry one of the wrong type is a MalformedReply (retried
        with `retry_malformed`)."""
        params = self._agg_params(symbol, from_id, start_ms, end_ms, limit)
        return await self.request(  # type: ignore[no-any-return]
            "/fapi/v1/aggTrades", params, priority=priority, decode=decode_agg_table
        )

    async def depth(self, symbol: str, limit: int = 1000, priority: int = HIGH) -> dict[str, Any]:
        """A depth snapshot; HIGH priority by default (a local book waits on it)."""
        if limit not in DEPTH_LIMITS:
            raise ValueError(f"depth limit: expected one of {DEPTH_LIMITS}, got {limit}")
        return await self.request(  # type: ignore[no-any-return]
            "/fapi/v1/depth",
            {"symbol": symbol, "limit": limit},
            weight=depth_weight(limit),
            priority=priority,
        )

    async def premium_index(self, symbol: str | None = None) -> Any:
        weight = 1 if symbol else 10
        return await self.request("/fapi/v1/premiumIndex", {"symbol": symbol}, weight=weight)

    async def funding_rate(
        self,
        symbol: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        params = {"symbol": symbol, "startTime": start_ms, "endTime": end_ms, "limit": limit}
        return await self.request(  # type: ignore[no-any-return]
            "/fapi/v1/fundingRate", params, decode=decode_funding_rows
        )

    async def open_interest(self, symbol: str) -> dict[str, Any]:
        return await self.request("/fapi/v1/openInterest", {"symbol": symbol})  # type: ignore[no-any-return]

    async def open_interest_hist(
        self,
        symbol: str,
        period: str = "5m",
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        params = {
            "symbol": symbol,
            "period": period,
            "startTime": start_ms,
            "endTime": end_ms,
            "limit": limit,
        }
        return await self.request(  # type: ignore[no-any-return]
            "/futures/data/openInterestHist", params, decode=decode_oi_hist_rows
        )


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _retry_after(headers: Any, default: float) -> float:
    raw = headers.get("Retry-After")
    if raw is None:
        return default
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    return default


def _error_body(body: bytes) -> tuple[int | None, str]:
    try:
        obj = json.loads(body)
    except ValueError:
        return None, body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(obj, dict) and "msg" in obj:
        code = obj.get("code")
        return (int(code) if isinstance(code, int | str) and str(code).lstrip("-").isdigit() else None), str(
            obj["msg"]
        )
    return None, str(obj)[:300]
