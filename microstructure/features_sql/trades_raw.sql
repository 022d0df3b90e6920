-- Trades, stage 1: the one scan of agg_trades. Per {width} (epoch-aligned) bucket, the partial
-- aggregates every trade column rolls up from exactly: the 1m bars (trades_bar.sql) and the trade
-- intensity chain (trade_counts_5s.sql) read this stage, never the raw trades again.
-- open/close: the price of the smallest / largest agg_id with that id beside it (so that a roll-up
-- takes the open of the smallest id over its buckets: the same trade as one pass over the raw rows;
-- Binance ids rise with trade time, so this is FEATURES.md's (ts, agg_id) order), as min/max of
-- [id, price] pairs: built-in aggregates, several times faster than the compat first()/last() on plain
-- PostgreSQL, exact while ids stay below 2^53 (PostgreSQL computes each identical pair aggregate once).
-- A trade is large when price * quantity >= the symbol's symbol_settings.large_trade_notional
-- (default 100000). Sums over an empty subset are 0 inside a bucket that has trades.
SELECT
    t.symbol,
    time_bucket(INTERVAL '{width}', t.ts) AS bucket,
    (min(ARRAY[t.agg_id::double precision, t.price]))[1] AS open_id,
    (min(ARRAY[t.agg_id::double precision, t.price]))[2] AS open,
    max(t.price) AS high,
    min(t.price) AS low,
    (max(ARRAY[t.agg_id::double precision, t.price]))[1] AS close_id,
    (max(ARRAY[t.agg_id::double precision, t.price]))[2] AS close,
    sum(t.quantity) AS volume,
    sum(t.price * t.quantity) AS quote_volume,
    count(*) AS trade_count,
    sum(t.last_trade_id - t.first_trade_id + 1)::bigint AS fill_count,
    sum(CASE WHEN t.is_buyer_maker THEN 0::double precision ELSE t.quantity END) AS buy_volume,
    sum(CASE WHEN t.is_buyer_maker THEN t.quantity ELSE 0::double precision END) AS sell_volume,
    sum(CASE WHEN t.price * t.quantity >= coalesce(s.large_trade_notional, 100000) THEN 1 ELSE 0 END)::bigint
        AS large_trade_count,
    sum(CASE WHEN t.price * t.quantity >= coalesce(s.large_trade_notional, 100000) THEN t.quantity ELSE 0::double precision END)
        AS large_trade_volume
FROM agg_trades t
LEFT JOIN symbol_settings s ON s.symbol = t.symbol
GROUP BY t.symbol, time_bucket(INTERVAL '{width}', t.ts)
