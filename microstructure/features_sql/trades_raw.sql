-- Trades, stage 1: the one scan of agg_trades. Per {width} (epoch-aligned) bucket, the partial
-- aggregates every trade column rolls up from exactly: the 1m bars (trades_bar.sql) and the trade
-- intensity chain (trade_counts_5s.sql) read this stage, never the raw trades again.
-- open/close: the price of the smallest / largest agg_id with that id beside it (so that a roll-up
-- takes the open of the smallest id over its buckets: the same trade as one pass over the raw rows;
-- Binance ids rise with trade time, so this is FEATURES.md's (ts, agg_id) order), as min/max of
-- [id, price] pairs: built-in aggregates, several times faster than the compat first()/last() on plain
-- PostgreSQL, exact while ids stay below 2^53 (PostgreSQL computes each identical pair aggregate once).
-- A trade is large when price * quantity >= the symbol's symbol_settings.large_trade_notional
-- (default 100000). Sums over an empty subset are 0 inside a bucket that has trades. FILTER, not
-- sum(CASE ...): rows outside the subset skip the transition call (a second less a day on one core).
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
    coalesce(sum(t.quantity) FILTER (WHERE NOT t.is_buyer_maker), 0) AS buy_volume,
    coalesce(sum(t.quantity) FILTER (WHERE t.is_buyer_maker), 0) AS sell_volume,
    count(*) FILTER (WHERE t.price * t.quantity >= coalesce(s.large_trade_notional, 100000)) AS large_trade_count,
    coalesce(sum(t.quantity) FILTER (WHERE t.price * t.quantity >= coalesce(s.large_trade_notional, 100000)), 0)
        AS large_trade_volume
FROM agg_trades t
LEFT JOIN symbol_settings s ON s.symbol = t.symbol
GROUP BY t.symbol, time_bucket(INTERVAL '{width}', t.ts)
