-- Ingest events (resyncs, poll misses, malformed input, reconnects, checksum mismatches) by kind.
SELECT collector, coalesce(symbol, '*') AS symbol, kind, count(*) AS n, max(ts) AS last_seen
FROM ingest_events
WHERE ts > now() - %(window)s::interval
GROUP BY collector, coalesce(symbol, '*'), kind
ORDER BY collector, symbol, kind;
