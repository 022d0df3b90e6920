-- One ingest event of the reconciler: $1 symbol, $2 kind, $3 detail (json).
INSERT INTO ingest_events (collector, symbol, kind, detail) VALUES ('reconcile', $1, $2, $3::jsonb)
