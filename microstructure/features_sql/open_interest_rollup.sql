-- Open interest, roll-up: {source} bars -> {width} bars.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    last(open_interest, bucket) AS open_interest,
    sum(oi_count)::bigint AS oi_count
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
