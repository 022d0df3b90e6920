-- Take, for the session, the lock of table $1's partition for day $2 (the one
-- microstructure_ensure_day_partitions takes for its transaction, so no writer makes the partition
-- while the day is loaded) and say whether the bulk path applies: $1 is partitioned by day and the
-- day has no partition. bulk_day_unlock.sql lets it go.
SELECT pg_advisory_lock(hashtext('microstructure_partition:' || microstructure_day_partition_name($1, $2))),
       microstructure_partition_column($1) IS NOT NULL
       AND to_regclass(microstructure_day_partition_name($1, $2)) IS NULL AS fresh
