-- Rows per UTC day and symbol of raw table {table} before $1 (the days retention may drop).
-- {table} and {time} come from microstructure.db.tables.TIME_TABLES, never from user input.
SELECT ({time} AT TIME ZONE 'UTC')::date AS day, symbol, count(*) AS n
FROM {table}
WHERE {time} < $1
GROUP BY 1, 2
ORDER BY 1, 2
