-- Gaps live collectors detected, recorded before their fill, for several symbols at once: one
-- element per gap, $1 symbol, $2 first missing id, $3 last missing id; $4 note. As gaps_record.sql:
-- a range whose ids are all stored already is not recorded; a filled or shorter row of the same
-- first id is opened again with the wider range. Two records of one first id keep the wider.
INSERT INTO agg_trade_gaps AS g (symbol, from_id, to_id, status, detected_at, note)
SELECT x.symbol, x.f, max(x.t), 'open', now(), $4
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS x(symbol, f, t)
WHERE (SELECT count(*) FROM agg_trades a WHERE a.symbol = x.symbol AND a.agg_id BETWEEN x.f AND x.t) < x.t - x.f + 1
GROUP BY x.symbol, x.f
ON CONFLICT (symbol, from_id) DO UPDATE SET
    to_id = greatest(g.to_id, excluded.to_id), status = 'open', resolved_at = NULL, note = excluded.note
WHERE g.status <> 'open' OR g.to_id < excluded.to_id
