"""microstructure: Binance USD-M Futures microstructure ingestion."""

__version__ = "0.1.0"
