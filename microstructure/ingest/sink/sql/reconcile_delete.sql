-- Remove the stored rows the archive contradicts from agg_trades: $1 symbol.
DELETE FROM agg_trades t USING reconcile_diff d
WHERE t.symbol = $1 AND d.kind IN ('differs', 'extra') AND t.agg_id = d.agg_id AND t.ts = d.s_ts
