-- Make the missing UTC-day partitions of table $1 for [$2, $3] (none when it is not day-partitioned:
-- a TimescaleDB hypertable, a small table). Revision 0006 defines the function.
SELECT microstructure_ensure_day_partitions($1, $2, $3)
