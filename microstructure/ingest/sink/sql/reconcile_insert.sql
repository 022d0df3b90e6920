-- Store the archive's version of every missing or differing row ($1 symbol); a replaced row keeps
-- the receive time of the stored one.
INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id,
                        is_buyer_maker, recv_ts)
SELECT DISTINCT ON (agg_id) $1, agg_id, a_ts, a_price, a_quantity, a_first, a_last, a_maker, s_recv
FROM reconcile_diff WHERE kind IN ('missing', 'differs')
ORDER BY agg_id, s_recv NULLS LAST
ON CONFLICT DO NOTHING
