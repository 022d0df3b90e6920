-- Gaps a live collector detected, recorded before their fill: $1 symbol, $2 first missing ids,
-- $3 last missing ids, $4 note. A range whose ids are all stored already (its fill committed first)
-- is not recorded; a filled or shorter row of the same first id is opened again with the wider range
-- (the writer's rescan closes it once its ids are stored).
INSERT INTO agg_trade_gaps AS g (symbol, from_id, to_id, status, detected_at, note)
SELECT $1, x.f, x.t, 'open', now(), $4
FROM unnest($2::bigint[], $3::bigint[]) AS x(f, t)
WHERE (SELECT count(*) FROM agg_trades a WHERE a.symbol = $1 AND a.agg_id BETWEEN x.f AND x.t) < x.t - x.f + 1
ON CONFLICT (symbol, from_id) DO UPDATE SET
    to_id = greatest(g.to_id, excluded.to_id), status = 'open', resolved_at = NULL, note = excluded.note
WHERE g.status <> 'open' OR g.to_id < excluded.to_id
