"""How Binance speaks: its REST API, its data.binance.vision archives and its combined websocket streams."""
