-- The end of the newest materialised 1m bar (any stage), for the features lag metric.
SELECT greatest(
    (SELECT max(bucket) FROM trades_1m),
    (SELECT max(bucket) FROM book_1m),
    (SELECT max(bucket) FROM market_1m)
) + INTERVAL '1 minute' AS newest_bar_end
