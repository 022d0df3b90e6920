-- What a failed load of day $2 of $1 left in microstructure_load, dropped.
SELECT microstructure_drop_load_table($1, $2)
