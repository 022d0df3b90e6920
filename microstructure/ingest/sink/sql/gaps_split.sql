-- Record the parts of a gap of symbol $1 that was open (its row just deleted): the ranges now
-- stored ('filled', resolved now) and the ranges still missing ('open'), each keeping the gap's
-- detection time $6 and note $7. $2/$3 first/last ids of the filled parts, $4/$5 of the open parts.
INSERT INTO agg_trade_gaps AS g (symbol, from_id, to_id, status, detected_at, resolved_at, note)
SELECT $1, f, t, 'filled', $6::timestamptz, now(), $7::text FROM unnest($2::bigint[], $3::bigint[]) AS x(f, t)
UNION ALL
SELECT $1, f, t, 'open', $6::timestamptz, NULL::timestamptz, $7::text FROM unnest($4::bigint[], $5::bigint[]) AS y(f, t)
ON CONFLICT (symbol, from_id) DO UPDATE SET
    to_id = excluded.to_id, status = excluded.status, detected_at = excluded.detected_at,
    resolved_at = excluded.resolved_at, note = excluded.note;
