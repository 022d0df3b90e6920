-- Coverage of one symbol and UTC day computed from the stored rows (verification and repair).
-- $1 symbol, $2 day
WITH s AS (
    SELECT min(agg_id) AS first_id, max(agg_id) AS last_id, count(*) AS n
    FROM agg_trades
    WHERE symbol = $1 AND ts >= $2::date::timestamp AT TIME ZONE 'UTC'
      AND ts < ($2::date + 1)::timestamp AT TIME ZONE 'UTC'
)
INSERT INTO agg_trade_coverage AS c (symbol, day, first_id, last_id, row_count, missing_count, updated_at)
SELECT $1, $2::date, first_id, last_id, n, last_id - first_id + 1 - n, now() FROM s WHERE n > 0
ON CONFLICT (symbol, day) DO UPDATE SET
    first_id = excluded.first_id, last_id = excluded.last_id, row_count = excluded.row_count,
    missing_count = excluded.missing_count, updated_at = now()
RETURNING first_id, last_id, row_count, missing_count;
