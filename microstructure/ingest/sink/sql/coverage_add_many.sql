-- Add one flush to the per-day coverage of the aggregate trades of every symbol in it.
-- $1 symbols, $2 days, $3 first ids, $4 last ids, $5 rows inserted (one element per symbol and day)
INSERT INTO agg_trade_coverage AS c (symbol, day, first_id, last_id, row_count, missing_count, updated_at)
SELECT d.symbol, d.day, d.first_id, d.last_id, d.inserted, d.last_id - d.first_id + 1 - d.inserted, now()
FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[]) AS d(symbol, day, first_id, last_id, inserted)
ON CONFLICT (symbol, day) DO UPDATE SET
    first_id = least(c.first_id, excluded.first_id),
    last_id = greatest(c.last_id, excluded.last_id),
    row_count = c.row_count + excluded.row_count,
    missing_count = greatest(c.last_id, excluded.last_id) - least(c.first_id, excluded.first_id) + 1
                    - (c.row_count + excluded.row_count),
    updated_at = now();
