-- Trade intensity: {source} -> {width} sub-buckets, carrying the busiest 1 s inside each.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    sum(trades)::bigint AS trades,
    max(trades) AS max_1s
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
