-- Take the lock of table $1's partition for day $2 (the one microstructure_ensure_day_partitions
-- takes) and say whether the bulk path applies: $1 is partitioned by day and the day has no partition.
SELECT pg_advisory_xact_lock(hashtext('microstructure_partition:' || microstructure_day_partition_name($1, $2))),
       microstructure_partition_column($1) IS NOT NULL
       AND to_regclass(microstructure_day_partition_name($1, $2)) IS NULL AS fresh
