-- Mark symbol $1's day $2 as verified by the aggTrades archive of sha256 $3.
UPDATE agg_trade_coverage SET verified_sha256 = $3, verified_at = now()
WHERE symbol = $1 AND day = $2
