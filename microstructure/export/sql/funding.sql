-- funding: settled funding rates (timestamp = settlement time).
SELECT funding_ts AS timestamp, funding_rate, mark_price, funding_interval_hours
FROM funding_rates
WHERE symbol = $1 AND funding_ts >= $2 AND funding_ts < $3
ORDER BY funding_ts
