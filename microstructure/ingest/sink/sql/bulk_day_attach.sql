-- The indexed day's keys finished, the table moved into the parent's schema and attached (its CHECK
-- matches the partition bound: ATTACH scans nothing).
SELECT microstructure_attach_load_table($1, $2)
