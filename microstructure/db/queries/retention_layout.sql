-- How raw table $1 is stored: partitioned by UTC day (revision 0006)? Is TimescaleDB installed?
SELECT microstructure_partition_column($1) IS NOT NULL AS partitioned,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb
