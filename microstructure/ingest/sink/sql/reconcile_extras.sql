-- The stored rows the archive does not hold (ids and times), at most $1.
SELECT agg_id, (extract(epoch FROM s_ts) * 1000)::bigint AS ts_ms
FROM reconcile_diff WHERE kind = 'extra' ORDER BY agg_id LIMIT $1
