-- Quality (docs/FEATURES.md "Quality"): each symbol's first and last stored trade time. A bar's
-- trade stream is known when the first is before the bar and the last at or after its end. The
-- first counts trades retention dropped (ingest_checkpoints 'retention:agg_trades' keeps the first
-- trade time the symbol ever had), so dropping old days changes no kept bar. Symbols by a loose
-- index scan and min/max by the (symbol, ts) index: a few probes per symbol, once per query (the
-- per-bar EXISTS this replaces cost a scan per bar once the planner had statistics). A function so
-- that the feature views do not depend on agg_trades (which day partitioning replaces).
CREATE OR REPLACE FUNCTION microstructure_trade_bounds()
RETURNS TABLE (symbol text, first_ts timestamptz, last_ts timestamptz)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE s(symbol) AS (
        (SELECT a.symbol FROM agg_trades a ORDER BY a.symbol LIMIT 1)
        UNION ALL
        SELECT (SELECT a.symbol FROM agg_trades a WHERE a.symbol > s.symbol ORDER BY a.symbol LIMIT 1)
        FROM s
        WHERE s.symbol IS NOT NULL
    )
    SELECT s.symbol,
           least((SELECT min(a.ts) FROM agg_trades a WHERE a.symbol = s.symbol),
                 (SELECT c.last_ts FROM ingest_checkpoints c
                  WHERE c.collector = 'retention:agg_trades' AND c.symbol = s.symbol)),
           (SELECT max(a.ts) FROM agg_trades a WHERE a.symbol = s.symbol)
    FROM s
    WHERE s.symbol IS NOT NULL
$$
