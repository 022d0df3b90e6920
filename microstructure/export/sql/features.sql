-- features_{tf}: every column of the view (timestamp = the bar's start, bucket_end its end, which is
-- also when the bar became available), then symbol.
SELECT bucket AS timestamp, bucket_end, {columns}, symbol
FROM features_{tf}
WHERE symbol = $1 AND bucket >= $2 AND bucket < $3
ORDER BY bucket
