-- The CHECK matching the day's bound (ATTACH skips its scan), then ATTACH PARTITION.
SELECT microstructure_attach_day_table($1, $2)
