-- The end of the newest hour any Parquet export wrote (the exporter records it per output folder
-- in microstructure_meta), for the export lag metric.
SELECT max(value::timestamptz) AS newest_hour_end
FROM microstructure_meta
WHERE key LIKE 'export_watermark:%'
