-- Runs of consecutive stored ids of symbol $1 inside [$2, $3]: what of a gap is there now.
SELECT min(agg_id) AS from_id, max(agg_id) AS to_id
FROM (
    SELECT agg_id, agg_id - row_number() OVER (ORDER BY agg_id) AS grp
    FROM (SELECT DISTINCT agg_id FROM agg_trades WHERE symbol = $1 AND agg_id BETWEEN $2 AND $3) d
) s
GROUP BY grp
ORDER BY 1;
