-- Missing id ranges of every symbol of a flush: for symbol $1[i] and the flush's id range
-- [$2[i], $3[i]] widened to the stored ids just below and above it, the holes among the stored ids;
-- where $4[i] (the flush held every id of its range) only the edges to those neighbours are read.
WITH u AS (
    SELECT u.symbol, u.lo_id, u.hi_id, u.complete,
           coalesce((SELECT max(agg_id) FROM agg_trades a WHERE a.symbol = u.symbol AND a.agg_id < u.lo_id), u.lo_id) AS lo,
           coalesce((SELECT min(agg_id) FROM agg_trades a WHERE a.symbol = u.symbol AND a.agg_id > u.hi_id), u.hi_id) AS hi
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::boolean[]) AS u(symbol, lo_id, hi_id, complete)
), spans AS (
    SELECT symbol, lo AS a, lo_id AS b FROM u WHERE complete
    UNION ALL SELECT symbol, hi_id, hi FROM u WHERE complete
    UNION ALL SELECT symbol, lo, hi FROM u WHERE NOT complete
)
SELECT DISTINCT s.symbol, x.from_id, x.to_id
FROM spans s
CROSS JOIN LATERAL (
    SELECT agg_id + 1 AS from_id, nxt - 1 AS to_id
    FROM (
        SELECT agg_id, lead(agg_id) OVER (ORDER BY agg_id) AS nxt
        FROM agg_trades a
        WHERE a.symbol = s.symbol AND a.agg_id BETWEEN s.a AND s.b
    ) q
    WHERE nxt > agg_id + 1
) x
WHERE s.b > s.a
ORDER BY 1, 2
