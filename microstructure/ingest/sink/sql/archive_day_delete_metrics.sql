-- The stored metrics rows of symbol $1 in [$2, $3), before the day's archive is loaded again.
DELETE FROM futures_metrics WHERE symbol = $1 AND ts >= $2 AND ts < $3
