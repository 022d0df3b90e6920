-- Stored aggregate-trade days of symbols $1 (NULL: every symbol) in [$2, $3], with the sha256 of the
-- archive each was last verified with (NULL: never).
SELECT symbol, day, verified_sha256
FROM agg_trade_coverage
WHERE ($1::text[] IS NULL OR symbol = ANY($1::text[])) AND day BETWEEN $2 AND $3
ORDER BY symbol, day
