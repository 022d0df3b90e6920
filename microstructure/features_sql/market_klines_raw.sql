-- Market klines, stage 1: price_klines (the 1m mark and index klines of Binance's archives, open time
-- ts) -> {width} bars. mark_price / index_price are the close of the bar's last minute holding a kline
-- of that kind (max of [open time, close] pairs); mark_ts / index_ts that minute's open time in epoch
-- seconds. The premium-index klines are not read: Binance's premium index is the funding premium
-- (impact bid/ask against the index), not (mark - index) / index (docs/FEATURES.md "Market").
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    (max(CASE WHEN kind = 'mark' THEN ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), close] END))[2] AS mark_price,
    max(CASE WHEN kind = 'mark' THEN date_part('epoch', ts AT TIME ZONE 'UTC') END) AS mark_ts,
    (max(CASE WHEN kind = 'index' THEN ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), close] END))[2] AS index_price,
    max(CASE WHEN kind = 'index' THEN date_part('epoch', ts AT TIME ZONE 'UTC') END) AS index_ts
FROM price_klines
WHERE kind IN ('mark', 'index')
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
