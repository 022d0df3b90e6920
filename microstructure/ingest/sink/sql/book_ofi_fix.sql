-- The level-1 OFI term of the snapshots a write added (times $2..$3) and of the snapshot right
-- after them, each against the symbol's immediately preceding snapshot in (ts, last_update_id)
-- order, whatever batch, run or source it came from (FEATURES.md). The collector computed the
-- terms against what it saw; this corrects the first row of a run, rows written late or out of
-- order, and the successor of an inserted row. Same arithmetic as the collector's, so rows already
-- right are not touched. Returns the times of the rows it changed.
WITH bounds AS (
    SELECT
        coalesce((SELECT max(ts) FROM book_snapshots WHERE symbol = $1 AND ts < $2), $2) AS lo,
        coalesce((SELECT min(ts) FROM book_snapshots WHERE symbol = $1 AND ts > $3), $3) AS hi
),
span AS (
    SELECT s.ts, s.last_update_id,
           s.bid_px[1] AS b, s.bid_qty[1] AS bq, s.ask_px[1] AS a, s.ask_qty[1] AS aq
    FROM book_snapshots s, bounds
    WHERE s.symbol = $1 AND s.ts >= bounds.lo AND s.ts <= bounds.hi
),
terms AS (
    SELECT ts, last_update_id,
           CASE WHEN pb IS NULL OR pa IS NULL OR b IS NULL OR a IS NULL THEN NULL ELSE
               (CASE WHEN b >= pb THEN bq ELSE 0 END) - (CASE WHEN b <= pb THEN pbq ELSE 0 END)
               - (CASE WHEN a <= pa THEN aq ELSE 0 END) + (CASE WHEN a >= pa THEN paq ELSE 0 END)
           END AS term
    FROM (
        SELECT span.*, lag(b) OVER w AS pb, lag(bq) OVER w AS pbq, lag(a) OVER w AS pa, lag(aq) OVER w AS paq
        FROM span WINDOW w AS (ORDER BY ts, last_update_id)
    ) x
    WHERE ts >= $2
)
UPDATE book_snapshots s SET ofi = t.term
FROM terms t
WHERE s.symbol = $1 AND s.ts = t.ts AND s.last_update_id = t.last_update_id
  AND s.ofi IS DISTINCT FROM t.term
RETURNING s.ts
