-- Market, stage 1: mark_prices -> {width} bars (bucketed by event time E). index_price and the
-- stream's funding rate r are the last non-NULL values in the bar (a NULL time is skipped by last());
-- the spot premium is carried as sum and count over rows whose index price is neither NULL nor 0.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    last(mark_price, ts) AS mark_price,
    last(index_price, CASE WHEN index_price IS NOT NULL THEN ts END) AS index_price,
    last(funding_rate, CASE WHEN funding_rate IS NOT NULL THEN ts END) AS funding_rate,
    sum(CASE WHEN index_price <> 0 THEN (mark_price - index_price) / index_price * 100 END) AS premium_sum,
    count(CASE WHEN index_price <> 0 THEN 1 END) AS premium_n,
    count(*) AS mark_count
FROM mark_prices
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
