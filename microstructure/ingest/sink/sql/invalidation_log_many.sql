-- One flush touched raw rows of $1 (table) for the symbols $2 with times $3..$4 (epoch ms, both
-- included; one element per symbol); logged in the flush's own transaction, as invalidation_log.sql.
INSERT INTO raw_invalidations (table_name, symbol, lo, hi)
SELECT $1, s, to_timestamp(lo::bigint / 1000.0), to_timestamp(hi::bigint / 1000.0)
FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(s, lo, hi)
