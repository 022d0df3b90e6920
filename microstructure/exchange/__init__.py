"""A local Binance USD-M Futures look-alike: REST, websockets and bulk archives on one port.

from microstructure.exchange import ExchangeConfig, FaultConfig, LocalExchange

async with LocalExchange(ExchangeConfig(symbols=("BTCUSDT",), history_days=2)) as ex:
    ex.base_url   # http://127.0.0.1:PORT  (REST and archives)
    ex.ws_url     # ws://127.0.0.1:PORT    (/ws/<stream>, /stream?streams=a/b)
"""

from microstructure.exchange.config import ExchangeConfig, FaultConfig, FormatConfig, SymbolSpec, symbol_spec
from microstructure.exchange.server import ExchangeThread, LocalExchange, serve_forever

__all__ = [
    "ExchangeConfig",
    "ExchangeThread",
    "FaultConfig",
    "FormatConfig",
    "LocalExchange",
    "SymbolSpec",
    "serve_forever",
    "symbol_spec",
]
