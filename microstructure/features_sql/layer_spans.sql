-- Feature-layer rebuild: each symbol's first and last row time in {table}, by a loose index scan
-- (the next symbol after the last one, then min/max of ts for that symbol: a few index probes per
-- symbol through the (symbol, ts) index, never a scan of the table).
WITH RECURSIVE s(symbol) AS (
    (SELECT symbol FROM {table} ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT t.symbol FROM {table} t WHERE t.symbol > s.symbol ORDER BY t.symbol LIMIT 1)
    FROM s
    WHERE s.symbol IS NOT NULL
)
SELECT
    s.symbol,
    (SELECT min(t.ts) FROM {table} t WHERE t.symbol = s.symbol) AS lo,
    (SELECT max(t.ts) FROM {table} t WHERE t.symbol = s.symbol) AS hi
FROM s
WHERE s.symbol IS NOT NULL
