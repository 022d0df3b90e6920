-- mark_price: <s>@markPrice@1s (timestamp = event time E).
SELECT ts AS timestamp, mark_price, index_price, est_settle_price, funding_rate, next_funding_ts AS next_funding_time,
       recv_ts AS recv_time
FROM mark_prices
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts
