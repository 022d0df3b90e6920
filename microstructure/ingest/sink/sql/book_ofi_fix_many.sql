-- book_ofi_fix.sql for every symbol of a flush at once: the level-1 OFI term of the snapshots the
-- flush added for symbol $1[i] (times $2[i]..$3[i]) and of the snapshot right after them, each
-- against that symbol's immediately preceding snapshot in (ts, last_update_id) order. Returns the
-- symbol and time of every row it changed.
WITH u AS (
    SELECT u.symbol, u.lo_ts,
           coalesce((SELECT max(ts) FROM book_snapshots b WHERE b.symbol = u.symbol AND b.ts < u.lo_ts), u.lo_ts) AS lo,
           coalesce((SELECT min(ts) FROM book_snapshots b WHERE b.symbol = u.symbol AND b.ts > u.hi_ts), u.hi_ts) AS hi
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS u(symbol, lo_ts, hi_ts)
),
span AS (
    SELECT s.symbol, u.lo_ts, s.ts, s.last_update_id,
           s.bid_px[1] AS b, s.bid_qty[1] AS bq, s.ask_px[1] AS a, s.ask_qty[1] AS aq
    FROM u JOIN book_snapshots s ON s.symbol = u.symbol AND s.ts >= u.lo AND s.ts <= u.hi
),
terms AS (
    SELECT symbol, ts, last_update_id,
           CASE WHEN pb IS NULL OR pa IS NULL OR b IS NULL OR a IS NULL THEN NULL ELSE
               (CASE WHEN b >= pb THEN bq ELSE 0 END) - (CASE WHEN b <= pb THEN pbq ELSE 0 END)
               - (CASE WHEN a <= pa THEN aq ELSE 0 END) + (CASE WHEN a >= pa THEN paq ELSE 0 END)
           END AS term
    FROM (
        SELECT span.*, lag(b) OVER w AS pb, lag(bq) OVER w AS pbq, lag(a) OVER w AS pa, lag(aq) OVER w AS paq
        FROM span WINDOW w AS (PARTITION BY symbol ORDER BY ts, last_update_id)
    ) x
    WHERE ts >= lo_ts
)
UPDATE book_snapshots s SET ofi = t.term
FROM terms t
WHERE s.symbol = t.symbol AND s.ts = t.ts AND s.last_update_id = t.last_update_id
  AND s.ofi IS DISTINCT FROM t.term
RETURNING s.symbol, s.ts
