-- Trade intensity, stage 1: aggregate trades per {width} (epoch-aligned) sub-bucket.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    count(*) AS trades
FROM agg_trades
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
