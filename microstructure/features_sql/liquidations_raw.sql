-- Liquidations, stage 1: liquidations -> {width} bars by event time. side SELL: a long was
-- force-closed; BUY: a short. The exchange samples them (at most one order per symbol per
-- second): these volumes are lower bounds.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    sum(CASE WHEN side = 'SELL' THEN quantity ELSE 0::double precision END) AS liq_long_vol,
    sum(CASE WHEN side = 'BUY' THEN quantity ELSE 0::double precision END) AS liq_short_vol,
    count(*) AS liq_count
FROM liquidations
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
