-- A plain (small) table: delete the rows before $1. {table}/{time} from TIME_TABLES only.
DELETE FROM {table} WHERE {time} < $1
