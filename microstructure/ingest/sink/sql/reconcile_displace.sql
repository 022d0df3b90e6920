-- Keep the stored versions the archive contradicts (audit): $1 symbol, $2 archive sha256.
INSERT INTO archive_displaced (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id,
                               is_buyer_maker, recv_ts, reason, archive_sha256)
SELECT $1, agg_id, s_ts, s_price, s_quantity, s_first, s_last, s_maker, s_recv,
       CASE kind WHEN 'differs' THEN 'differs' ELSE 'not_in_archive' END, $2
FROM reconcile_diff WHERE kind IN ('differs', 'extra')
