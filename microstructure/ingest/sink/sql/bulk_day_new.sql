-- A standalone table shaped like $1 for day $2, created in this transaction (so COPY FREEZE works).
SELECT microstructure_new_day_table($1, $2)
