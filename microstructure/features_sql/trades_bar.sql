-- Trades: {source} partial buckets -> {width} bars; every column combines exactly (open and close by
-- the smallest / largest agg_id over the buckets, as one pass over the raw rows would take them).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    (min(ARRAY[open_id, open]))[2] AS open,
    max(high) AS high,
    min(low) AS low,
    (max(ARRAY[close_id, close]))[2] AS close,
    sum(volume) AS volume,
    sum(quote_volume) AS quote_volume,
    sum(trade_count)::bigint AS trade_count,
    sum(fill_count)::bigint AS fill_count,
    sum(buy_volume) AS buy_volume,
    sum(sell_volume) AS sell_volume,
    sum(large_trade_count)::bigint AS large_trade_count,
    sum(large_trade_volume) AS large_trade_volume
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
