-- Open gaps of the symbols $1[i] overlapping the id ranges [$2[i], $3[i]] a flush just wrote into,
-- locked, each with the runs of stored ids inside it now (what of the gap is there): one row per
-- run, a gap without any stored id has one row with null run bounds.
WITH g AS (
    SELECT g.symbol, g.from_id, g.to_id, g.detected_at, g.note
    FROM agg_trade_gaps g
    JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(symbol, lo, hi)
      ON g.symbol = u.symbol AND g.from_id <= u.hi AND g.to_id >= u.lo
    WHERE g.status = 'open'
    ORDER BY g.symbol, g.from_id
    FOR UPDATE OF g
)
SELECT g.symbol, g.from_id, g.to_id, g.detected_at, g.note, r.run_from, r.run_to
FROM g
LEFT JOIN LATERAL (
    SELECT min(agg_id) AS run_from, max(agg_id) AS run_to
    FROM (
        SELECT agg_id, agg_id - row_number() OVER (ORDER BY agg_id) AS grp
        FROM (SELECT DISTINCT agg_id FROM agg_trades a
              WHERE a.symbol = g.symbol AND a.agg_id BETWEEN g.from_id AND g.to_id) d
    ) s
    GROUP BY grp
) r ON true
ORDER BY g.symbol, g.from_id, r.run_from
