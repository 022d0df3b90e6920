-- Open gaps of the symbols $1 with the trade time (epoch ms) of the stored id just below each, for a
-- live run that starts by filling them (REST reaches back about a year; older ones need archives).
SELECT g.symbol, g.from_id, g.to_id,
       (SELECT (extract(epoch FROM a.ts) * 1000)::bigint FROM agg_trades a
        WHERE a.symbol = g.symbol AND a.agg_id < g.from_id ORDER BY a.agg_id DESC LIMIT 1) AS before_ms
FROM agg_trade_gaps g
WHERE g.status = 'open' AND g.symbol = ANY($1::text[])
ORDER BY g.symbol, g.from_id
