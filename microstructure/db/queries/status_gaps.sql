-- Open (or unfillable) aggregate-trade id gaps, newest first.
SELECT symbol, from_id, to_id, to_id - from_id + 1 AS missing, status, detected_at, note
FROM agg_trade_gaps
WHERE status <> 'filled'
ORDER BY symbol, from_id
LIMIT %(limit)s;
