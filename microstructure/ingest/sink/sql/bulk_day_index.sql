-- The parent's key and indexes, built on the filled day table before it is attached.
SELECT microstructure_index_day_table($1, $2)
