-- Open gaps of a symbol, oldest ids first.
SELECT from_id, to_id FROM agg_trade_gaps WHERE symbol = $1 AND status = 'open' ORDER BY from_id;
