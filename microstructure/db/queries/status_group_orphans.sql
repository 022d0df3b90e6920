-- `microstructure status`, collector groups: per group, the symbols of some member's universe (live or
-- dead) that no live member collects now.
WITH m AS (
    SELECT group_name, universe, owned,
           heartbeat_at > now() - make_interval(secs => lease_timeout_s) AS alive
    FROM collector_group_members
), wanted AS (
    SELECT DISTINCT group_name, unnest(universe) AS symbol FROM m
), held AS (
    SELECT DISTINCT group_name, unnest(owned) AS symbol FROM m WHERE alive
)
SELECT w.group_name, array_agg(w.symbol ORDER BY w.symbol) AS symbols
FROM wanted w
LEFT JOIN held h ON h.group_name = w.group_name AND h.symbol = w.symbol
WHERE h.symbol IS NULL
GROUP BY w.group_name
ORDER BY w.group_name
