-- Let go of the day's lock bulk_day_lock.sql took.
SELECT pg_advisory_unlock(hashtext('microstructure_partition:' || microstructure_day_partition_name($1, $2)))
