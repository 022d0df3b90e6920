-- Open gaps inside a scanned range that the scan no longer finds have been filled.
-- $1 symbol, $2 low id, $3 high id, $4 first ids of the gaps still missing
UPDATE agg_trade_gaps
SET status = 'filled', resolved_at = now()
WHERE symbol = $1 AND status = 'open' AND from_id >= $2 AND to_id <= $3 AND NOT (from_id = ANY($4::bigint[]));
