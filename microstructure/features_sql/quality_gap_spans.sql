-- Quality (docs/FEATURES.md "Quality"): the aggregate-id gaps not filled (open or unfillable) of
-- every symbol, each with the time span its missing ids can lie in: from the trade time of the
-- stored trade just below the gap (t0) to that of the one just above (t1); a side with no stored
-- trade is unbounded. A function, not a view's join, so that the feature views do not depend on
-- agg_trades (which day partitioning replaces); a plain SQL function, inlined by the planner.
CREATE OR REPLACE FUNCTION microstructure_gap_spans()
RETURNS TABLE (symbol text, ids bigint, t0 timestamptz, t1 timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT g.symbol, g.to_id - g.from_id + 1,
           coalesce(p.ts, '-infinity'::timestamptz), coalesce(n.ts, 'infinity'::timestamptz)
    FROM agg_trade_gaps g
    LEFT JOIN LATERAL (
        SELECT a.ts FROM agg_trades a WHERE a.symbol = g.symbol AND a.agg_id < g.from_id
        ORDER BY a.agg_id DESC LIMIT 1
    ) p ON true
    LEFT JOIN LATERAL (
        SELECT a.ts FROM agg_trades a WHERE a.symbol = g.symbol AND a.agg_id > g.to_id
        ORDER BY a.agg_id LIMIT 1
    ) n ON true
    WHERE g.status <> 'filled'
$$
