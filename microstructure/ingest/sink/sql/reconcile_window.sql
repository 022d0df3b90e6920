-- The stored trade days of symbols $1 within the last $2 days up to each symbol's newest stored day,
-- with the sha256 each was verified with (the live reconciler's candidates).
WITH newest AS (
    SELECT symbol, max(day) AS d FROM agg_trade_coverage WHERE symbol = ANY($1::text[]) GROUP BY symbol
)
SELECT c.symbol, c.day, c.verified_sha256
FROM agg_trade_coverage c JOIN newest n USING (symbol)
WHERE c.day > n.d - $2::int
ORDER BY c.symbol, c.day
