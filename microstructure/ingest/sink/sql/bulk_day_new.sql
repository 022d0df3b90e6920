-- The day's table in schema microstructure_load, shaped like $1 with the CHECK of day $2's bound and
-- symbol $3 as its symbol column's default, created in this transaction (so COPY FREEZE works); a
-- table a killed load left there is dropped.
SELECT microstructure_new_load_table($1, $2, $3)
