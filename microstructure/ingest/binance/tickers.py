"""GET /fapi/v1/ticker/24hr for every symbol (weight 40): each contract's 24 h quote volume, which
`--all-symbols --top N` ranks the universe by."""

from __future__ import annotations

from typing import Any

from microstructure.ingest.binance.rest import BinanceRest, DecodeError, _need, _num_field

TICKER_ALL_WEIGHT = 40


def decode_quote_volumes(obj: Any) -> dict[str, float]:
    """symbol -> 24 h quote volume; a row without a symbol or a numeric quoteVolume is malformed
    (DecodeError: the REST client counts the reply as malformed)."""
    out: dict[str, float] = {}
    for row in _need(obj, list, "ticker/24hr"):
        if not isinstance(row, dict) or not isinstance(row.get("symbol"), str):
            raise DecodeError(f"ticker/24hr: a row without 'symbol': {str(row)[:120]}")
        out[row["symbol"]] = _num_field(row, "quoteVolume", "ticker/24hr")
    return out


async def quote_volumes(rest: BinanceRest) -> dict[str, float]:
    return await rest.request(  # type: ignore[no-any-return]
        "/fapi/v1/ticker/24hr", weight=TICKER_ALL_WEIGHT, decode=decode_quote_volumes
    )
