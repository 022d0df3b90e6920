-- Rows and latest exchange time of each raw table besides agg_trades (which coverage describes).
SELECT 'book_snapshots' AS table_name, (SELECT count(*) FROM book_snapshots) AS row_count,
       (SELECT max(ts) FROM book_snapshots) AS last_ts
UNION ALL
SELECT 'mark_prices', (SELECT count(*) FROM mark_prices), (SELECT max(ts) FROM mark_prices)
UNION ALL
SELECT 'funding_rates', (SELECT count(*) FROM funding_rates), (SELECT max(funding_ts) FROM funding_rates)
UNION ALL
SELECT 'open_interest', (SELECT count(*) FROM open_interest), (SELECT max(ts) FROM open_interest)
UNION ALL
SELECT 'liquidations', (SELECT count(*) FROM liquidations), (SELECT max(ts) FROM liquidations)
UNION ALL  -- archive-only kinds
SELECT 'book_depth_bands', (SELECT count(*) FROM book_depth_bands), (SELECT max(ts) FROM book_depth_bands)
UNION ALL
SELECT 'futures_metrics', (SELECT count(*) FROM futures_metrics), (SELECT max(ts) FROM futures_metrics)
UNION ALL
SELECT 'price_klines', (SELECT count(*) FROM price_klines), (SELECT max(ts) FROM price_klines);
