-- Add one merged batch to the per-day coverage of a symbol's aggregate trades.
-- $1 symbol, $2 days, $3 first ids, $4 last ids, $5 rows inserted (per day, in the batch)
INSERT INTO agg_trade_coverage AS c (symbol, day, first_id, last_id, row_count, missing_count, updated_at)
SELECT $1, d.day, d.first_id, d.last_id, d.inserted, d.last_id - d.first_id + 1 - d.inserted, now()
FROM unnest($2::date[], $3::bigint[], $4::bigint[], $5::bigint[]) AS d(day, first_id, last_id, inserted)
ON CONFLICT (symbol, day) DO UPDATE SET
    first_id = least(c.first_id, excluded.first_id),
    last_id = greatest(c.last_id, excluded.last_id),
    row_count = c.row_count + excluded.row_count,
    missing_count = greatest(c.last_id, excluded.last_id) - least(c.first_id, excluded.first_id) + 1
                    - (c.row_count + excluded.row_count),
    updated_at = now();
