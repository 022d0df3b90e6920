-- TimescaleDB: drop the chunks of hypertable $1 that end before $2; how many.
SELECT count(*) FROM drop_chunks($1::regclass, older_than => $2::timestamptz)
