-- The stored ids just below and just above a batch's id range ($2..$3), or the range ends.
SELECT coalesce((SELECT max(agg_id) FROM agg_trades WHERE symbol = $1 AND agg_id < $2), $2) AS lo,
       coalesce((SELECT min(agg_id) FROM agg_trades WHERE symbol = $1 AND agg_id > $3), $3) AS hi;
