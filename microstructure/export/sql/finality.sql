-- Which bars of {view} are final by their data (the feature pull's point-in-time rule, docs/FEATURES.md
-- "Point in time"). {symbols}: the symbols (text[]), $2 first bucket, $3 end (exclusive), {lateness}:
-- the lateness allowance (interval). The pull passes $1 and {lateness}; the feature export (features.sql) its
-- one symbol and the default lateness (export/types.py fills the placeholders, never from user input).
-- A bar is final when every stream that feeds it was live past its end plus the lateness:
--   trades (agg_trades): ids are consecutive per symbol, so the stored trades are complete except
--     across an id gap the collectors recorded and did not fill (agg_trade_gaps status 'open' or
--     'unfillable': missing trades lie between the stored trades around it) and after the newest
--     stored trade. The bar is final for trades when the newest trade is at or after its end plus the
--     lateness and no unfilled gap reaches into it. A backfilled (archive-complete) day has no gap.
--   book snapshots and mark prices (streams with a fixed cadence, live only): a bar they fed is final
--     for them when the stream's first row at or after the bar's end came at most the lateness after
--     its last row in the bar, and the stream has rows at or after end + lateness. A stream that stopped inside
--     the bar never gives it a next row in time: that bar never becomes final, even once the stream
--     runs again (its rows inside the bar are partial and no archive restores them).
-- A stream without any row of the symbol does not hold its bars back.
WITH bars AS (
    SELECT symbol, bucket, bucket_end
    FROM {view}
    WHERE symbol = ANY({symbols}) AND bucket >= $2 AND bucket < $3
), heads AS (
    SELECT s AS symbol,
           (SELECT max(t.ts) FROM agg_trades t WHERE t.symbol = s) AS trade_last,
           (SELECT max(b.ts) FROM book_snapshots b WHERE b.symbol = s) AS book_last,
           (SELECT max(m.ts) FROM mark_prices m WHERE m.symbol = s) AS mark_last
    FROM unnest({symbols}) AS s
), holes AS (
    SELECT g.symbol,
           coalesce((SELECT min(a.ts) FROM agg_trades a WHERE a.symbol = g.symbol AND a.agg_id = g.from_id - 1),
                    '-infinity'::timestamptz) AS lo,
           coalesce((SELECT min(a.ts) FROM agg_trades a WHERE a.symbol = g.symbol AND a.agg_id = g.to_id + 1),
                    'infinity'::timestamptz) AS hi
    FROM agg_trade_gaps g
    WHERE g.symbol = ANY({symbols}) AND g.status <> 'filled'
)
SELECT b.symbol, b.bucket, coalesce(
       (h.trade_last IS NULL OR h.trade_last >= b.bucket_end + {lateness})
       AND NOT EXISTS (SELECT 1 FROM holes x WHERE x.symbol = b.symbol AND x.lo < b.bucket_end AND x.hi >= b.bucket)
       AND (bk.last_in IS NULL OR bk.last_in < b.bucket
            OR (bk.next_ts - bk.last_in <= {lateness} AND h.book_last >= b.bucket_end + {lateness}))
       AND (mk.last_in IS NULL OR mk.last_in < b.bucket
            OR (mk.next_ts - mk.last_in <= {lateness} AND h.mark_last >= b.bucket_end + {lateness})), false) AS final
FROM bars b
JOIN heads h USING (symbol)
LEFT JOIN LATERAL (
    SELECT (SELECT s.ts FROM book_snapshots s WHERE s.symbol = b.symbol AND s.ts < b.bucket_end
            ORDER BY s.ts DESC LIMIT 1) AS last_in,
           (SELECT s.ts FROM book_snapshots s WHERE s.symbol = b.symbol AND s.ts >= b.bucket_end
            ORDER BY s.ts LIMIT 1) AS next_ts
    WHERE h.book_last IS NOT NULL
) AS bk ON true
LEFT JOIN LATERAL (
    SELECT (SELECT m.ts FROM mark_prices m WHERE m.symbol = b.symbol AND m.ts < b.bucket_end
            ORDER BY m.ts DESC LIMIT 1) AS last_in,
           (SELECT m.ts FROM mark_prices m WHERE m.symbol = b.symbol AND m.ts >= b.bucket_end
            ORDER BY m.ts LIMIT 1) AS next_ts
    WHERE h.mark_last IS NOT NULL
) AS mk ON true
