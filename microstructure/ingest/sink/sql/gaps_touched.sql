-- Open gaps of symbol $1 that overlap the id range [$2, $3] a batch just wrote into, locked.
SELECT from_id, to_id, detected_at, note
FROM agg_trade_gaps
WHERE symbol = $1 AND status = 'open' AND from_id <= $3 AND to_id >= $2
ORDER BY from_id
FOR UPDATE;
