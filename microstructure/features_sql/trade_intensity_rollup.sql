-- Trade intensity, roll-up: {source} bars -> {width} bars. A bar's busiest sub-bucket is the busiest
-- of its finer bars' (sub-buckets never straddle a bar: widths divide evenly, all epoch-aligned).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    max(max_1s) AS max_1s,
    max(max_5s) AS max_5s,
    max(max_10s) AS max_10s
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
