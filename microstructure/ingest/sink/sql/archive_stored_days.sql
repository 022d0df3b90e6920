-- UTC days with stored rows of symbols $1 (NULL: every symbol) in [$2, $3] in the archive-only table
-- of dataset $4 (bookDepth: book_depth_bands, metrics: futures_metrics).
SELECT symbol, (ts AT TIME ZONE 'UTC')::date AS day
FROM book_depth_bands
WHERE $4 = 'bookDepth' AND ($1::text[] IS NULL OR symbol = ANY($1::text[]))
  AND ts >= $2::date::timestamp AT TIME ZONE 'UTC' AND ts < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'
GROUP BY 1, 2
UNION ALL
SELECT symbol, (ts AT TIME ZONE 'UTC')::date AS day
FROM futures_metrics
WHERE $4 = 'metrics' AND ($1::text[] IS NULL OR symbol = ANY($1::text[]))
  AND ts >= $2::date::timestamp AT TIME ZONE 'UTC' AND ts < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'
GROUP BY 1, 2
ORDER BY 1, 2
