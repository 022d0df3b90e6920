"""REST endpoints of Binance USD-M Futures: paths, parameters, field names and types as Binance's."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import date
from typing import Protocol

import numpy as np
from aiohttp import web

from microstructure.exchange import archives, healable
from microstructure.exchange.book import GRID_MS, book_at
from microstructure.exchange.config import DAY_MS, ExchangeConfig, symbol_spec
from microstructure.exchange.market import FUNDING_MS, SymbolMarket, Trades
from microstructure.exchange.ratelimit import WEIGHTS, RateLimiter, depth_weight

log = logging.getLogger(__name__)


class ExchangeState(Protocol):
    """What the REST endpoints read of the exchange they serve (server.LocalExchange is one)."""

    config: ExchangeConfig
    markets: dict[str, SymbolMarket]
    limiter: RateLimiter
    request_count: int

    def now_ms(self) -> int: ...

    async def archive_bytes(self, ref: archives.ArchiveRef) -> bytes | None: ...

    async def archive_checksum(self, ref: archives.ArchiveRef, data: bytes, filename: str) -> bytes: ...

    def reupload_archive(self, kind: str, symbol: str, day: str) -> int: ...


HOUR_MS = 3_600_000
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
OI_PERIODS = {
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


class ApiError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def fmt_units(u: int, d: int) -> str:
    """Integer u in units of 10**-d as fixed-point text: fmt_units(640012, 2) == '6400.12'."""
    if d == 0:
        return str(u)
    sign = "-" if u < 0 else ""
    s = str(abs(u)).rjust(d + 1, "0")
    return f"{sign}{s[:-d]}.{s[-d:]}"


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def json_response(obj: object | str, status: int = 200) -> web.Response:
    text = obj if isinstance(obj, str) else dumps(obj)
    return web.Response(text=text, status=status, content_type="application/json")


def error_response(
    code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=dumps({"code": code, "msg": msg}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _int_param(q: dict[str, str] | object, name: str, required: bool = False) -> int | None:
    raw = q.get(name)  # type: ignore[attr-defined]
    if raw is None or raw == "":
        if required:
            raise ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        ) from None


def _symbol(ex: ExchangeState, request: web.Request, required: bool = True) -> str | None:
    raw = request.query.get("symbol")
    if raw is None or raw == "":
        if required:
            raise ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        return None
    sym = raw.upper()
    if sym not in ex.markets:
        raise ApiError(-1121, "Invalid symbol.")
    return sym


def request_weight(path: str, query: object) -> int:
    if path == "/fapi/v1/depth":
        try:
            return depth_weight(int(query.get("limit", 500)))  # type: ignore[attr-defined]
        except ValueError:
            return 2
    if path == "/fapi/v1/premiumIndex" and not query.get("symbol"):  # type: ignore[attr-defined]
        return 10
    if path == "/fapi/v1/ticker/24hr" and not query.get("symbol"):  # type: ignore[attr-defined]
        return 40
    return WEIGHTS.get(path, 1)


def agg_rows_json(tr: Trades, price_dec: int, qty_dec: int) -> str:
    a, T, p, q, f, lt, m = (getattr(tr, k).tolist() for k in Trades.FIELDS)
    rows = [
        f'{{"a":{a[i]},"p":"{fmt_units(p[i], price_dec)}","q":"{fmt_units(q[i], qty_dec)}",'
        f'"f":{f[i]},"l":{lt[i]},"T":{T[i]},"m":{"true" if m[i] else "false"}}}'
        for i in range(len(a))
    ]
    return "[" + ",".join(rows) + "]"


# ---------------------------------------------------------------- middleware: weights and faults


def make_middleware(ex: ExchangeState):  # type: ignore[no-untyped-def]
    fault_rng = random.Random(ex.config.seed * 7919 + 1)

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        faults = ex.config.faults
        path = request.path
        if faults.rest_delay > 0 and not path.startswith(("/ws", "/stream")):
            await asyncio.sleep(faults.rest_delay)
        if not path.startswith(("/fapi/", "/futures/")):
            return await handler(request)
        now = ex.now_ms()
        client = request.remote or "?"
        ex.request_count += 1
        if faults.rest_429_rate > 0 and fault_rng.random() < faults.rest_429_rate:
            used = ex.limiter.used(client, now)
            return error_response(
                -1003,
                f"Too many requests; current limit of IP({client}) request weight per minute is "
                f"{ex.config.weight_limit}. Please use WebSocket Streams for live updates to avoid polling the API.",
                429,
                {"Retry-After": "1", "X-MBX-USED-WEIGHT-1M": str(used)},
            )
        if faults.rest_500_rate > 0 and fault_rng.random() < faults.rest_500_rate:
            return error_response(-1000, "An unknown error occurred while processing the request.", 500)
        verdict = ex.limiter.check(client, request_weight(path, request.query), now)
        headers = {"X-MBX-USED-WEIGHT-1M": str(verdict.used)}
        if verdict.status == 429:
            headers["Retry-After"] = str(verdict.retry_after)
            return error_response(
                -1003,
                f"Too many requests; current limit of IP({client}) request weight per minute is "
                f"{ex.config.weight_limit}. Please use WebSocket Streams for live updates to avoid polling the API.",
                429,
                headers,
            )
        if verdict.status == 418:
            headers["Retry-After"] = str(verdict.retry_after)
            return error_response(
                -1003,
                f"Way too many requests; IP({client}) banned until {verdict.banned_until}. "
                "Please use WebSocket Streams for live updates to avoid bans.",
                418,
                headers,
            )
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = error_response(exc.code, exc.msg, exc.status)
        if (
            faults.rest_malformed > 0
            and resp.status == 200
            and (not faults.rest_malformed_paths or path in faults.rest_malformed_paths)
            and fault_rng.random() < faults.rest_malformed
        ):
            resp = json_response(malformed_body(resp.text or "", fault_rng))
        resp.headers["X-MBX-USED-WEIGHT-1M"] = str(verdict.used)
        return resp

    return middleware


def malformed_body(text: str, rng: random.Random) -> str:
    """A broken version of a JSON answer: the same shape with every field removed, or cut in half."""
    if rng.random() < 0.5:
        return text[: max(1, len(text) // 2)]
    return "[{}]" if text.startswith("[") else "{}"


# ---------------------------------------------------------------- handlers


def routes(ex: ExchangeState) -> list[web.RouteDef]:
    async def ping(request: web.Request) -> web.Response:
        return json_response({})

    async def server_time(request: web.Request) -> web.Response:
        return json_response({"serverTime": ex.now_ms()})

    async def exchange_info(request: web.Request) -> web.Response:
        return json_response(exchange_info_body(ex))

    async def agg_trades(request: web.Request) -> web.Response:
        sym = _symbol(ex, request)
        assert sym is not None
        q = request.query
        limit = _int_param(q, "limit")
        limit = 500 if limit is None else limit
        if limit <= 0:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        limit = min(limit, 1000)
        from_id = _int_param(q, "fromId")
        start = _int_param(q, "startTime")
        end = _int_param(q, "endTime")
        now = ex.now_ms()
        market = ex.markets[sym]
        if from_id is not None and (start is not None or end is not None):
            raise ApiError(-1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None:
            if end < start:
                raise ApiError(-1128, "Combination of optional parameters invalid.")
            if end - start >= HOUR_MS:
                raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
            tr = market.trades_between(start, min(end, now) + 1, limit)
        elif start is not None:
            tr = market.trades_between(start, min(start + HOUR_MS, now + 1), limit)
        elif end is not None:
            tr = market.trades_between(end - HOUR_MS + 1, min(end, now) + 1, limit)
        elif from_id is not None:
            tr = market.trades_from_id(from_id, limit, now)
        else:
            tr = market.trades_last(limit, now)
        spec = market.spec
        tr = healable.live_view(tr, ex.config.seed, ex.config.faults, spec.tick)
        return json_response(agg_rows_json(tr, spec.price_decimals, spec.qty_decimals))

    async def depth(request: web.Request) -> web.Response:
        sym = _symbol(ex, request)
        assert sym is not None
        limit = _int_param(request.query, "limit")
        limit = 500 if limit is None else limit
        if limit not in DEPTH_LIMITS:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        now = ex.now_ms()
        market = ex.markets[sym]
        k = now // GRID_MS
        book = book_at(market, k, limit)
        spec = market.spec
        pd, qd = spec.price_decimals, spec.qty_decimals
        bids = [
            [fmt_units(p, pd), fmt_units(q, qd)]
            for p, q in zip(book.bids.prices.tolist(), book.bids.qty.tolist(), strict=False)
        ]
        asks = [
            [fmt_units(p, pd), fmt_units(q, qd)]
            for p, q in zip(book.asks.prices.tolist(), book.asks.qty.tolist(), strict=False)
        ]
        return json_response(
            {"lastUpdateId": book.update_id, "E": now, "T": k * GRID_MS, "bids": bids, "asks": asks}
        )

    async def premium_index(request: web.Request) -> web.Response:
        sym = _symbol(ex, request, required=False)
        now = ex.now_ms()
        items = [premium_index_body(ex, s, now) for s in ([sym] if sym else ex.markets)]
        return json_response(items[0] if sym else items)

    async def funding_rate(request: web.Request) -> web.Response:
        sym = _symbol(ex, request, required=False)
        q = request.query
        limit = _int_param(q, "limit")
        limit = 100 if limit is None else min(max(limit, 1), 1000)
        start = _int_param(q, "startTime")
        end = _int_param(q, "endTime")
        now = ex.now_ms()
        rows = []
        for s in [sym] if sym else list(ex.markets):
            if s in ex.config.formats.dated_symbols:
                continue  # a dated contract has no funding
            market = ex.markets[s]
            T, r, mk = market.fundings(0, now + 1)
            dec = market.spec.price_decimals
            rows += [
                (int(t), s, float(rate), float(m_))
                for t, rate, m_ in zip(T.tolist(), r.tolist(), mk.tolist(), strict=False)
                if (start is None or t >= start) and (end is None or t <= end)
            ]
            _ = dec
        rows.sort()
        rows = rows[:limit] if start is not None else rows[-limit:]
        mark_style = ex.config.formats.funding_mark_price
        out: list[dict[str, object]] = []
        for t, s, r, m_ in rows:
            row: dict[str, object] = {"symbol": s, "fundingTime": t, "fundingRate": f"{r:.8f}"}
            if mark_style != "absent":  # older settlements come without a mark price, or with ""
                row["markPrice"] = f"{m_:.8f}" if mark_style == "value" else ""
            out.append(row)
        return json_response(out)

    async def ticker_24hr(request: web.Request) -> web.Response:
        """The rolling 24 h statistics of a symbol (weight 1) or of every listed one (weight 40), from
        the trades of the last 24 h (a delisted contract keeps its last figures, as on Binance)."""
        sym = _symbol(ex, request, required=False)
        now = ex.now_ms()
        items = [ticker_24hr_body(ex, s, now) for s in ([sym] if sym else ex.markets)]
        return json_response(items[0] if sym else items)

    async def open_interest(request: web.Request) -> web.Response:
        sym = _symbol(ex, request)
        assert sym is not None
        now = ex.now_ms()
        market = ex.markets[sym]
        return json_response(
            {
                "openInterest": f"{market.oi_at(now):.{market.spec.qty_decimals}f}",
                "symbol": sym,
                "time": now,
            }
        )

    async def open_interest_hist(request: web.Request) -> web.Response:
        sym = _symbol(ex, request)
        assert sym is not None
        q = request.query
        period = q.get("period")
        if not period:
            raise ApiError(-1102, "Mandatory parameter 'period' was not sent, was empty/null, or malformed.")
        if period not in OI_PERIODS:
            raise ApiError(-1130, "Data sent for parameter 'period' is not valid.")
        step = OI_PERIODS[period]
        limit = _int_param(q, "limit")
        limit = 30 if limit is None else min(max(limit, 1), 500)
        start = _int_param(q, "startTime")
        end = _int_param(q, "endTime")
        now = ex.now_ms()
        market = ex.markets[sym]
        lo = max(now - 30 * DAY_MS, market.origin_ms)
        if start is not None:
            lo = max(lo, start)
        hi = now if end is None else min(end, now)
        times = np.arange(-(-lo // step) * step, hi + 1, step, dtype=np.int64)
        times = times[:limit] if start is not None else times[-limit:]
        out = []
        for t in times.tolist():
            oi = market.oi_at(t)
            seg, i = market.second_at(t)
            mark = float(seg.mark[i])
            out.append(
                {
                    "symbol": sym,
                    "sumOpenInterest": f"{oi:.8f}",
                    "sumOpenInterestValue": f"{oi * mark:.8f}",
                    "timestamp": t,
                }
            )
        return json_response(out)

    async def archive(request: web.Request) -> web.Response:
        path = request.path.lstrip("/")
        parsed = archives.parse_path(path)
        if parsed is None:
            return not_found(path)
        ref, is_checksum = parsed
        data = await ex.archive_bytes(ref)
        if data is None:
            return not_found(path)
        filename = path.rsplit("/", 1)[-1].removesuffix(".CHECKSUM")
        if is_checksum:
            checksum = await ex.archive_checksum(ref, data, filename)
            return web.Response(body=checksum, content_type="text/plain", charset="utf-8")
        return web.Response(body=data, content_type="application/zip")

    async def reupload(request: web.Request) -> web.Response:
        """Admin (the local exchange only): re-upload a day's archive with one row changed."""
        q = request.query
        kind, symbol, day = q.get("type", "aggTrades"), q.get("symbol", ""), q.get("date", "")
        try:
            date.fromisoformat(day)
            revision = ex.reupload_archive(kind, symbol, day)
        except (KeyError, ValueError):
            return json_response({"error": f"unknown archive {kind} {symbol} {day}"}, status=400)
        return json_response({"type": kind, "symbol": symbol.upper(), "date": day, "revision": revision})

    return [
        web.post("/admin/reupload", reupload),
        web.get("/fapi/v1/ping", ping),
        web.get("/fapi/v1/time", server_time),
        web.get("/fapi/v1/exchangeInfo", exchange_info),
        web.get("/fapi/v1/aggTrades", agg_trades),
        web.get("/fapi/v1/depth", depth),
        web.get("/fapi/v1/premiumIndex", premium_index),
        web.get("/fapi/v1/fundingRate", funding_rate),
        web.get("/fapi/v1/openInterest", open_interest),
        web.get("/fapi/v1/ticker/24hr", ticker_24hr),
        web.get("/futures/data/openInterestHist", open_interest_hist),
        web.get("/data/{tail:.*}", archive),
    ]


def not_found(path: str) -> web.Response:
    return web.Response(text=archives.no_such_key(path), status=404, content_type="application/xml")


def premium_index_body(ex: ExchangeState, sym: str, now: int) -> dict[str, object]:
    market = ex.markets[sym]
    seg, i = market.second_at(now)
    if sym in ex.config.formats.dated_symbols:
        # a dated contract: no funding, and Binance's "not applicable" values
        return {
            "symbol": sym,
            "markPrice": f"{seg.mark[i]:.8f}",
            "indexPrice": f"{seg.index[i]:.8f}",
            "estimatedSettlePrice": "0.00000000",
            "lastFundingRate": "",
            "interestRate": "",
            "nextFundingTime": 0,
            "time": now,
        }
    return {
        "symbol": sym,
        "markPrice": f"{seg.mark[i]:.8f}",
        "indexPrice": f"{seg.index[i]:.8f}",
        "estimatedSettlePrice": f"{seg.index[i]:.8f}",
        "lastFundingRate": f"{seg.est_rate[i]:.8f}",
        "interestRate": "0.00010000",
        "nextFundingTime": (now // FUNDING_MS + 1) * FUNDING_MS,
        "time": now,
    }


def quarter_end_ms(now: int) -> int:
    """08:00 UTC of the last Friday of the quarter after `now`: when a quarterly contract delivers."""
    from datetime import UTC, datetime, timedelta

    d = datetime.fromtimestamp(now / 1000, tz=UTC).date()
    q_last_month = ((d.month - 1) // 3 + 1) * 3
    y, m = (d.year, q_last_month + 1) if q_last_month < 12 else (d.year + 1, 1)
    last = datetime(y, m, 1, 8, tzinfo=UTC) - timedelta(days=1)
    last -= timedelta(days=(last.weekday() - 4) % 7)
    t = int(last.timestamp() * 1000)
    return t if t > now else quarter_end_ms(t + DAY_MS)


def onboard_ms(ex: ExchangeState, real_ms: int) -> int:
    """A contract's listing time: the real one, or `listed_days` before today when configured."""
    if ex.config.listed_days is None:
        return real_ms
    return ex.now_ms() // DAY_MS * DAY_MS - ex.config.listed_days * DAY_MS


def ticker_24hr_body(ex: ExchangeState, sym: str, now: int) -> dict[str, object]:
    """GET /fapi/v1/ticker/24hr's object for one symbol (the fields collectors read, and the usual others)."""
    market = ex.markets[sym]
    spec = market.spec
    tr = market.trades_between(now - DAY_MS, now + 1)
    px = tr.price.astype(np.float64) / 10**spec.price_decimals
    qty = tr.qty.astype(np.float64) / 10**spec.qty_decimals
    last = float(px[-1]) if len(px) else 0.0
    first = float(px[0]) if len(px) else 0.0
    pd = spec.price_decimals
    return {
        "symbol": sym,
        "priceChange": f"{last - first:.{pd}f}",
        "priceChangePercent": f"{(last / first - 1) * 100 if first else 0.0:.3f}",
        "lastPrice": f"{last:.{pd}f}",
        "highPrice": f"{float(px.max()) if len(px) else 0.0:.{pd}f}",
        "lowPrice": f"{float(px.min()) if len(px) else 0.0:.{pd}f}",
        "volume": f"{float(qty.sum()):.{spec.qty_decimals}f}",
        "quoteVolume": f"{float((px * qty).sum()):.2f}",
        "openTime": now - DAY_MS,
        "closeTime": now,
        "firstId": int(tr.a[0]) if len(tr) else -1,
        "lastId": int(tr.a[-1]) if len(tr) else -1,
        "count": len(tr),
    }


def exchange_info_body(ex: ExchangeState) -> dict[str, object]:
    symbols = []
    for sym in ex.markets:
        s = symbol_spec(sym)
        tick = fmt_units(s.tick, s.price_decimals)
        step = fmt_units(s.step, s.qty_decimals)
        dated = sym in ex.config.formats.dated_symbols
        symbols.append(
            {
                "symbol": sym,
                "pair": sym,
                "contractType": "CURRENT_QUARTER" if dated else "PERPETUAL",
                "deliveryDate": quarter_end_ms(ex.now_ms()) if dated else 4133404800000,
                "onboardDate": onboard_ms(ex, s.onboard_ms),
                "status": ex.status(sym) if hasattr(ex, "status") else "TRADING",
                "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000",
                "baseAsset": s.base_asset,
                "quoteAsset": s.quote_asset,
                "marginAsset": s.quote_asset,
                "pricePrecision": s.price_decimals,
                "quantityPrecision": s.qty_decimals,
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "underlyingType": "COIN",
                "underlyingSubType": [],
                "settlePlan": 0,
                "triggerProtect": "0.0500",
                "liquidationFee": "0.012500",
                "marketTakeBound": "0.05",
                "maxMoveOrderLimit": 10000,
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": tick,
                        "maxPrice": "4529764",
                        "tickSize": tick,
                    },
                    {"filterType": "LOT_SIZE", "stepSize": step, "maxQty": "1000", "minQty": step},
                    {"filterType": "MARKET_LOT_SIZE", "stepSize": step, "maxQty": "120", "minQty": step},
                    {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                    {"filterType": "MIN_NOTIONAL", "notional": "100"},
                    {
                        "filterType": "PERCENT_PRICE",
                        "multiplierUp": "1.0500",
                        "multiplierDown": "0.9500",
                        "multiplierDecimal": "4",
                    },
                ],
                "orderTypes": [
                    "LIMIT",
                    "MARKET",
                    "STOP",
                    "STOP_MARKET",
                    "TAKE_PROFIT",
                    "TAKE_PROFIT_MARKET",
                    "TRAILING_STOP_MARKET",
                ],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
            }
        )
    return {
        "timezone": "UTC",
        "serverTime": ex.now_ms(),
        "futuresType": "U_MARGINED",
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": ex.config.weight_limit,
            },
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [
            {"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"},
        ],
        "symbols": symbols,
    }
