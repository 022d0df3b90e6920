-- What a retention run dropped, in the ingest event log.
INSERT INTO ingest_events (collector, symbol, kind, detail) VALUES ('retention', NULL, 'retention', $1::jsonb)
