-- What the diff found: counts by kind and the time span of every row it changes (epoch ms).
SELECT count(*) FILTER (WHERE kind = 'missing') AS missing,
       count(*) FILTER (WHERE kind = 'differs') AS differing,
       count(*) FILTER (WHERE kind = 'extra') AS extra,
       (extract(epoch FROM least(min(s_ts), min(a_ts))) * 1000)::bigint AS lo_ms,
       (extract(epoch FROM greatest(max(s_ts), max(a_ts))) * 1000)::bigint AS hi_ms
FROM reconcile_diff
