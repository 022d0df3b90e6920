-- Market, roll-up: {source} bars -> {width} bars.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    (max(ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), mark_price]))[2] AS mark_price,
    (max(CASE WHEN index_price IS NOT NULL THEN ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), index_price] END))[2]
        AS index_price,
    (max(CASE WHEN funding_rate IS NOT NULL THEN ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), funding_rate] END))[2]
        AS funding_rate,
    sum(premium_sum) AS premium_sum,
    sum(premium_n)::bigint AS premium_n,
    sum(mark_count)::bigint AS mark_count,
    sum(mark_seconds)::bigint AS mark_seconds
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
