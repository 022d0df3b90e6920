-- The Parquet export folders the exporter recorded (key export_watermark:<folder>).
SELECT substr(key, length('export_watermark:') + 1) AS root
FROM microstructure_meta
WHERE key LIKE 'export_watermark:%'
ORDER BY 1
