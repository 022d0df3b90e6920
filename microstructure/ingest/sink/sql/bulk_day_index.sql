-- The statements building the parent's keys and indexes on the day's table, one per index: each
-- may run on its own connection at the same time as the others.
SELECT build
FROM microstructure_day_index_ddl($1, $2, format('microstructure_load.%I', microstructure_day_partition_name($1, $2))::regclass)
