"""What is collected, and when: the live and historical collectors of trades, books and market data."""
