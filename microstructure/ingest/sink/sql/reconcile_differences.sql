-- The differing rows, each with the columns that differ (stored value -> archive value), at most $1.
SELECT agg_id,
       array_remove(ARRAY[
           CASE WHEN s_ts IS DISTINCT FROM a_ts THEN 'time' END,
           CASE WHEN s_price IS DISTINCT FROM a_price THEN 'price' END,
           CASE WHEN s_quantity IS DISTINCT FROM a_quantity THEN 'quantity' END,
           CASE WHEN s_first IS DISTINCT FROM a_first THEN 'first_trade_id' END,
           CASE WHEN s_last IS DISTINCT FROM a_last THEN 'last_trade_id' END,
           CASE WHEN s_maker IS DISTINCT FROM a_maker THEN 'is_buyer_maker' END
       ], NULL) AS fields,
       (extract(epoch FROM s_ts) * 1000)::bigint AS s_ts_ms, s_price, s_quantity, s_first, s_last, s_maker,
       (extract(epoch FROM a_ts) * 1000)::bigint AS a_ts_ms, a_price, a_quantity, a_first, a_last, a_maker
FROM reconcile_diff
WHERE kind = 'differs'
ORDER BY agg_id
LIMIT $1
