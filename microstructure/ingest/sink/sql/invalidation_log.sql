-- One write touched raw rows of $1 (table) for $2 (symbol) with times $3..$4 (epoch ms, both
-- included); logged in the write's own transaction for the feature refresher and the export.
INSERT INTO raw_invalidations (table_name, symbol, lo, hi)
VALUES ($1, $2, to_timestamp($3::bigint / 1000.0), to_timestamp($4::bigint / 1000.0))
