-- One row per symbol with aggregate trades: coverage totals, open gaps and live lag.
WITH cov AS (
    SELECT symbol,
           min(day) AS first_day,
           max(day) AS last_day,
           count(*) AS days,
           sum(row_count) AS row_count,
           sum(missing_count) AS missing_in_days,
           min(first_id) AS first_id,
           max(last_id) AS last_id
    FROM agg_trade_coverage
    GROUP BY symbol
), gaps AS (
    SELECT symbol,
           count(*) FILTER (WHERE status = 'open') AS open_gaps,
           coalesce(sum(to_id - from_id + 1) FILTER (WHERE status = 'open'), 0) AS open_missing,
           count(*) FILTER (WHERE status = 'filled') AS filled_gaps,
           count(*) FILTER (WHERE status = 'unfillable') AS unfillable_gaps
    FROM agg_trade_gaps
    GROUP BY symbol
), latest AS (
    SELECT c.symbol, t.ts AS last_trade_ts, t.recv_ts AS last_recv_ts
    FROM cov c
    CROSS JOIN LATERAL (
        SELECT ts, recv_ts FROM agg_trades a
        WHERE a.symbol = c.symbol AND a.agg_id = c.last_id
        LIMIT 1
    ) t
)
SELECT c.symbol, c.first_day, c.last_day, c.days, c.row_count, c.first_id, c.last_id,
       c.missing_in_days,
       coalesce(g.open_gaps, 0) AS open_gaps,
       coalesce(g.open_missing, 0) AS open_missing,
       coalesce(g.filled_gaps, 0) AS filled_gaps,
       coalesce(g.unfillable_gaps, 0) AS unfillable_gaps,
       l.last_trade_ts,
       extract(epoch FROM now() - l.last_trade_ts) AS lag_seconds,
       extract(epoch FROM l.last_recv_ts - l.last_trade_ts) AS recv_delay_seconds
FROM cov c
LEFT JOIN gaps g USING (symbol)
LEFT JOIN latest l USING (symbol)
ORDER BY c.symbol;
