-- Trades, roll-up: {source} bars -> {width} bars; every column combines exactly.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    (min(ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), open]))[2] AS open,
    max(high) AS high,
    min(low) AS low,
    (max(ARRAY[date_part('epoch', bucket AT TIME ZONE 'UTC'), close]))[2] AS close,
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
