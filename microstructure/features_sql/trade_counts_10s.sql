-- Trade intensity: {source} -> {width} sub-buckets, carrying the busiest 1 s and 5 s inside each.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    sum(trades)::bigint AS trades,
    max(max_1s) AS max_1s,
    max(trades) AS max_5s
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
