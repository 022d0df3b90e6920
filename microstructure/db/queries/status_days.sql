-- Halts vs loss, per symbol and UTC day of the last %(days)s stored days: each pair of consecutive
-- stored aggregate trades (by id) is either contiguous (next id = id + 1) or not. A span of at least
-- %(quiet_s)s seconds between contiguous ids is quiet (a halt or a quiet market: the exchange
-- published nothing), never a gap; ids missing between two stored ones are loss. A span belongs to
-- the day of its later trade; the first trade of the window has no predecessor.
WITH last_day AS (
    SELECT max(day) AS d FROM agg_trade_coverage
), d AS (
    SELECT c.symbol, c.day, c.row_count, c.missing_count, c.verified_sha256
    FROM agg_trade_coverage c, last_day l
    WHERE c.day > l.d - %(days)s::int
), t AS (
    SELECT a.symbol, a.agg_id, a.ts,
           lag(a.agg_id) OVER w AS prev_id,
           lag(a.ts) OVER w AS prev_ts
    FROM agg_trades a
    JOIN d ON a.symbol = d.symbol
          AND a.ts >= d.day::timestamp AT TIME ZONE 'UTC'
          AND a.ts < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
    WINDOW w AS (PARTITION BY a.symbol ORDER BY a.agg_id)
), spans AS (
    SELECT symbol, (ts AT TIME ZONE 'UTC')::date AS day,
           count(*) FILTER (WHERE agg_id = prev_id + 1
                              AND ts - prev_ts >= make_interval(secs => %(quiet_s)s)) AS quiet_spans,
           coalesce(sum(extract(epoch FROM ts - prev_ts))
                    FILTER (WHERE agg_id = prev_id + 1
                              AND ts - prev_ts >= make_interval(secs => %(quiet_s)s)), 0) AS quiet_seconds,
           coalesce(max(extract(epoch FROM ts - prev_ts)) FILTER (WHERE agg_id = prev_id + 1), 0)
               AS longest_quiet_seconds,
           count(*) FILTER (WHERE agg_id > prev_id + 1) AS loss_spans,
           coalesce(sum(agg_id - prev_id - 1) FILTER (WHERE agg_id > prev_id + 1), 0) AS lost_ids
    FROM t
    WHERE prev_id IS NOT NULL
    GROUP BY 1, 2
)
SELECT d.symbol, d.day, d.row_count,
       d.verified_sha256,
       coalesce(s.loss_spans, 0) AS loss_spans,
       coalesce(s.lost_ids, 0) AS lost_ids,
       coalesce(s.quiet_spans, 0) AS quiet_spans,
       coalesce(s.quiet_seconds, 0)::double precision AS quiet_seconds,
       coalesce(s.longest_quiet_seconds, 0)::double precision AS longest_quiet_seconds
FROM d
LEFT JOIN spans s USING (symbol, day)
ORDER BY d.symbol, d.day;
