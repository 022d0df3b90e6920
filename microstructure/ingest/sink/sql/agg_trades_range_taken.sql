-- Is any aggregate id of [$2, $3] already stored for symbol $1? (the writer's direct-COPY test)
SELECT EXISTS (SELECT 1 FROM agg_trades WHERE symbol = $1 AND agg_id BETWEEN $2 AND $3)
