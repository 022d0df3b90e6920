-- Market, stage 1: mark_prices -> {width} bars (bucketed by event time E). index_price and the
-- stream's funding rate r are the last non-NULL values in the bar (max of [time, value] pairs, NULL pairs
-- skipped; mark_prices has one row per time);
-- the spot premium is carried as sum and count over rows whose index price is neither NULL nor 0.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    (max(ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), mark_price]))[2] AS mark_price,
    (max(CASE WHEN index_price IS NOT NULL THEN ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), index_price] END))[2] AS index_price,
    (max(CASE WHEN funding_rate IS NOT NULL THEN ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), funding_rate] END))[2]
        AS funding_rate,
    sum(CASE WHEN index_price <> 0 THEN (mark_price - index_price) / index_price * 100 END) AS premium_sum,
    count(CASE WHEN index_price <> 0 THEN 1 END) AS premium_n,
    count(*) AS mark_count,
    -- quality: distinct epoch-aligned seconds holding a mark price (mark_coverage, docs/FEATURES.md)
    count(DISTINCT time_bucket(INTERVAL '1 second', ts)) AS mark_seconds
FROM mark_prices
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
