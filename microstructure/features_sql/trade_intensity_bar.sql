-- Trade intensity: {source} sub-buckets -> {width} bars: the trade counts of the bar's busiest
-- 1 s, 5 s and 10 s windows (epoch-aligned sub-buckets; the view divides by N).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    max(max_1s) AS max_1s,
    max(max_5s) AS max_5s,
    max(trades) AS max_10s
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
