-- Quality, trade seconds, roll-up: {source} bars -> {width} bars (seconds never straddle a bar).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    sum(trade_seconds)::bigint AS trade_seconds
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
