-- Trade intensity: {source} (the per-second trade partials) -> {width} sub-buckets, carrying the
-- busiest 1 s inside each.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    sum(trade_count)::bigint AS trades,
    max(trade_count) AS max_1s
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
