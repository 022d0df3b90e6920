-- Before agg_trades rows before $1 go: each symbol's first trade time ever stored, kept as the
-- checkpoint 'retention:agg_trades' (quality_trade_bounds.sql reads it, so the kept bars' trade
-- stream stays known). Symbols by a loose index scan; an earlier checkpoint keeps its earlier time.
WITH RECURSIVE s(symbol) AS (
    (SELECT a.symbol FROM agg_trades a WHERE a.ts < $1 ORDER BY a.symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT a.symbol FROM agg_trades a WHERE a.symbol > s.symbol AND a.ts < $1 ORDER BY a.symbol LIMIT 1)
    FROM s
    WHERE s.symbol IS NOT NULL
)
INSERT INTO ingest_checkpoints AS c (collector, symbol, last_ts, detail)
SELECT 'retention:agg_trades', s.symbol, (SELECT min(a.ts) FROM agg_trades a WHERE a.symbol = s.symbol),
       jsonb_build_object('dropped_before', $1::timestamptz)
FROM s
WHERE s.symbol IS NOT NULL
ON CONFLICT (collector, symbol) DO UPDATE
SET last_ts = least(c.last_ts, excluded.last_ts), detail = excluded.detail, updated_at = now()
