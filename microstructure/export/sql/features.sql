-- features_{tf}: every column of the view (timestamp = the bar's start, bucket_end its end), then
-- `final`: whether the bar was final by its data when the file was written (finality.sql, at the
-- default lateness); the exporter adds symbol last.
SELECT f.bucket AS timestamp, f.bucket_end, {columns}, fin.final
FROM features_{tf} f
JOIN ({finality}) fin ON fin.symbol = f.symbol AND fin.bucket = f.bucket
WHERE f.symbol = $1 AND f.bucket >= $2 AND f.bucket < $3
ORDER BY f.bucket
