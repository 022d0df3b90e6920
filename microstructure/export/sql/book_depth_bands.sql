-- book_depth_bands: data.binance.vision bookDepth (cumulative depth within +-N % of mid, ~30 s apart).
SELECT ts AS timestamp, percentage::double precision AS percentage, depth, notional
FROM book_depth_bands
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts, percentage
