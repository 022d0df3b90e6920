-- Missing id ranges among the stored ids of a symbol between $2 and $3 (inclusive).
SELECT agg_id + 1 AS from_id, nxt - 1 AS to_id
FROM (
    SELECT agg_id, lead(agg_id) OVER (ORDER BY agg_id) AS nxt
    FROM agg_trades
    WHERE symbol = $1 AND agg_id BETWEEN $2 AND $3
) s
WHERE nxt > agg_id + 1
ORDER BY from_id;
