-- Market klines, roll-up: {source} bars -> {width} bars (the close of the last minute of each kind).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    (max(CASE WHEN mark_price IS NOT NULL THEN ARRAY[mark_ts, mark_price] END))[2] AS mark_price,
    max(mark_ts) AS mark_ts,
    (max(CASE WHEN index_price IS NOT NULL THEN ARRAY[index_ts, index_price] END))[2] AS index_price,
    max(index_ts) AS index_ts
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
