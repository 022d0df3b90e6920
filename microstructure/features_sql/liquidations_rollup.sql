-- Liquidations, roll-up: {source} bars -> {width} bars (lower bounds, see liquidations_raw.sql).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    sum(liq_long_vol) AS liq_long_vol,
    sum(liq_short_vol) AS liq_short_vol,
    sum(liq_count)::bigint AS liq_count
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
