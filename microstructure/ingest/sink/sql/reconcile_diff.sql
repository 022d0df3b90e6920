-- One set-based diff of the stored rows of symbol $1 against the archive in reconcile_archive.
-- The stored side: rows whose time is in the day [$2, $3) or whose id is in the archive's id range
-- (a row stored with a wrong time is matched by id). kind: missing (archive only), extra (store
-- only, inside the day), differs (same id, another value).
INSERT INTO reconcile_diff
WITH bounds AS (SELECT min(agg_id) AS lo, max(agg_id) AS hi FROM reconcile_archive),
stored AS (
    SELECT t.agg_id, t.ts, t.price, t.quantity, t.first_trade_id, t.last_trade_id, t.is_buyer_maker,
           t.recv_ts
    FROM agg_trades t, bounds b
    WHERE t.symbol = $1 AND ((t.ts >= $2 AND t.ts < $3) OR t.agg_id BETWEEN b.lo AND b.hi)
)
SELECT coalesce(a.agg_id, s.agg_id) AS agg_id,
       CASE WHEN s.agg_id IS NULL THEN 'missing' WHEN a.agg_id IS NULL THEN 'extra' ELSE 'differs' END
           AS kind,
       s.ts AS s_ts, s.price AS s_price, s.quantity AS s_quantity, s.first_trade_id AS s_first,
       s.last_trade_id AS s_last, s.is_buyer_maker AS s_maker, s.recv_ts AS s_recv,
       a.ts AS a_ts, a.price AS a_price, a.quantity AS a_quantity, a.first_trade_id AS a_first,
       a.last_trade_id AS a_last, a.is_buyer_maker AS a_maker
FROM reconcile_archive a
FULL JOIN stored s ON s.agg_id = a.agg_id
WHERE s.agg_id IS NULL
   OR a.agg_id IS NULL
   OR (s.ts, s.price, s.quantity, s.first_trade_id, s.last_trade_id, s.is_buyer_maker)
      IS DISTINCT FROM (a.ts, a.price, a.quantity, a.first_trade_id, a.last_trade_id, a.is_buyer_maker)
