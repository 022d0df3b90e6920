-- Market, stage 1: mark_prices -> {width} bars (bucketed by event time E). mark_price is the bar's last
-- mark price, index_price and the stream's (predicted) funding rate r the last non-NULL values (max of
-- [time, value] pairs, NULL pairs skipped; mark_prices has one row per time); mark_ts / index_ts are
-- the epoch seconds of those last values, which the view compares with the 1m klines' minutes
-- (market_klines_raw.sql) to take each bar's last value from whichever source has it.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    (max(ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), mark_price]))[2] AS mark_price,
    max(date_part('epoch', ts AT TIME ZONE 'UTC')) AS mark_ts,
    (max(CASE WHEN index_price IS NOT NULL THEN ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), index_price] END))[2] AS index_price,
    max(CASE WHEN index_price IS NOT NULL THEN date_part('epoch', ts AT TIME ZONE 'UTC') END) AS index_ts,
    (max(CASE WHEN funding_rate IS NOT NULL THEN ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), funding_rate] END))[2]
        AS funding_rate,
    count(*) AS mark_count,
    -- quality: distinct epoch-aligned seconds holding a mark price (mark_coverage, docs/FEATURES.md)
    count(DISTINCT time_bucket(INTERVAL '1 second', ts)) AS mark_seconds
FROM mark_prices
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
