-- klines: 1m mark / index / premium-index klines (timestamp = open time; kind says which).
SELECT ts AS timestamp, kind, open, high, low, close, close_ts AS close_time
FROM price_klines
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts, kind
