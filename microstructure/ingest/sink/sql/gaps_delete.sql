-- Remove the open gap of symbol $1 starting at $2 (gaps_split records its parts).
DELETE FROM agg_trade_gaps WHERE symbol = $1 AND from_id = $2 AND status = 'open';
