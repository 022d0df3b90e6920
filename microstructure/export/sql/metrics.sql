-- metrics: data.binance.vision 5-minute open interest and long/short ratios.
SELECT ts AS timestamp, sum_open_interest, sum_open_interest_value, count_toptrader_long_short_ratio,
       sum_toptrader_long_short_ratio, count_long_short_ratio, sum_taker_long_short_vol_ratio
FROM futures_metrics
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts
