-- The day partitions of table $1 (name and the UTC day it holds), oldest first.
SELECT c.relname AS name, to_date(right(c.relname, 8), 'YYYYMMDD') AS day
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::text::regclass
  AND c.relname = microstructure_day_partition_name($1::text, to_date(right(c.relname, 8), 'YYYYMMDD'))
ORDER BY 2
