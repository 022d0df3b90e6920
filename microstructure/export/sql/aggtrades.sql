-- aggtrades: the brief's schema (timestamp = trade time T, trade_id = aggregate id); the exporter adds symbol last.
SELECT ts AS timestamp, agg_id AS trade_id, price, quantity, is_buyer_maker, first_trade_id, last_trade_id
FROM agg_trades
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts  -- ties (equal times) are put in agg_id order by the exporter (order_ties): no sort on the server
