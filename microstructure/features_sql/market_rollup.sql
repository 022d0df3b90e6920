-- Market, roll-up: {source} bars -> {width} bars.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    last(mark_price, bucket) AS mark_price,
    last(index_price, CASE WHEN index_price IS NOT NULL THEN bucket END) AS index_price,
    last(funding_rate, CASE WHEN funding_rate IS NOT NULL THEN bucket END) AS funding_rate,
    sum(premium_sum) AS premium_sum,
    sum(premium_n)::bigint AS premium_n,
    sum(mark_count)::bigint AS mark_count
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
