-- features_{tf}: every column of the view (timestamp = the bar's start, bucket_end its end, which is
-- also when the bar became available); the exporter adds symbol last.
SELECT bucket AS timestamp, bucket_end, {columns}
FROM features_{tf}
WHERE symbol = $1 AND bucket >= $2 AND bucket < $3
ORDER BY bucket
