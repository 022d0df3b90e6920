"""Ingestion, laid out as its data flows: Binance -> collectors -> sink, every stage speaking records.

- binance/     how Binance speaks: REST client, data.binance.vision archives, combined websocket streams;
- collectors/  what is collected, when: aggregate trades, order books, market data, `collect all`;
- sink/        how rows land: binary COPY writer, coverage and gaps;
- records.py   the shared vocabulary: Arrow schemas of the batches, SnapshotRow;
- health.py    what every stage reports to: health counters and the ingest_events log;
- cli.py       every `microstructure collect` sub-command.
"""
