-- Market, roll-up: {source} bars -> {width} bars (the last values of the finer bars, by their times).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    (max(ARRAY[mark_ts, mark_price]))[2] AS mark_price,
    max(mark_ts) AS mark_ts,
    (max(CASE WHEN index_price IS NOT NULL THEN ARRAY[index_ts, index_price] END))[2] AS index_price,
    max(index_ts) AS index_ts,
    (max(CASE WHEN funding_rate IS NOT NULL THEN ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), funding_rate] END))[2]
        AS funding_rate,
    sum(mark_count)::bigint AS mark_count,
    sum(mark_seconds)::bigint AS mark_seconds
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
