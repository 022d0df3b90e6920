-- Record the missing ranges found in a scanned id range as open gaps.
-- $1 symbol, $2 first missing ids, $3 last missing ids
INSERT INTO agg_trade_gaps AS g (symbol, from_id, to_id, status, detected_at)
SELECT $1, f, t, 'open', now() FROM unnest($2::bigint[], $3::bigint[]) AS x(f, t)
ON CONFLICT (symbol, from_id) DO UPDATE SET to_id = excluded.to_id, status = 'open', resolved_at = NULL
WHERE g.to_id <> excluded.to_id OR g.status <> 'open';
