-- Record the parts of gaps that were open (their rows just deleted), for every symbol of a flush:
-- one element per part: $1 symbol, $2 first id, $3 last id, $4 status ('filled': stored now,
-- resolved now; 'open': still missing), $5 the gap's detection time, $6 its note.
INSERT INTO agg_trade_gaps AS g (symbol, from_id, to_id, status, detected_at, resolved_at, note)
SELECT symbol, f, t, st, det, CASE WHEN st = 'filled' THEN now() END, note
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[], $6::text[])
    AS x(symbol, f, t, st, det, note)
ON CONFLICT (symbol, from_id) DO UPDATE SET
    to_id = excluded.to_id, status = excluded.status, detected_at = excluded.detected_at,
    resolved_at = excluded.resolved_at, note = excluded.note;
