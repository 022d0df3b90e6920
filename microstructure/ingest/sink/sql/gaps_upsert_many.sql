-- Record the missing ranges found by gaps_scan_many as open gaps: $1 symbols, $2 first missing
-- ids, $3 last missing ids (one element per range).
INSERT INTO agg_trade_gaps AS g (symbol, from_id, to_id, status, detected_at)
SELECT symbol, f, t, 'open', now() FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS x(symbol, f, t)
ON CONFLICT (symbol, from_id) DO UPDATE SET to_id = excluded.to_id, status = 'open', resolved_at = NULL
WHERE g.to_id <> excluded.to_id OR g.status <> 'open';
