-- Remove the open gaps ($1[i] symbol, $2[i] first id) gaps_split_many records the parts of.
DELETE FROM agg_trade_gaps g
USING unnest($1::text[], $2::bigint[]) AS u(symbol, from_id)
WHERE g.symbol = u.symbol AND g.from_id = u.from_id AND g.status = 'open';
