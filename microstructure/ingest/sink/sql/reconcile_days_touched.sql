-- The UTC days of every stored and archive time the diff changes.
SELECT DISTINCT (t AT TIME ZONE 'UTC')::date AS day
FROM reconcile_diff, LATERAL (VALUES (s_ts), (a_ts)) v(t)
WHERE t IS NOT NULL
ORDER BY 1
