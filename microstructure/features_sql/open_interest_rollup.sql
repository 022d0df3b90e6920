-- Open interest, roll-up: {source} bars -> {width} bars.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    (max(ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), open_interest]))[2] AS open_interest,
    sum(oi_count)::bigint AS oi_count,
    max(oi_last_ts) AS oi_last_ts
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
