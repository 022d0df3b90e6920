-- liquidations: forceOrder events (timestamp = event time E). Sampled by the exchange: lower bounds.
SELECT ts AS timestamp, trade_ts AS trade_time, side, order_type, time_in_force, quantity, price, avg_price, status,
       last_filled_qty, filled_qty, recv_ts AS recv_time
FROM liquidations
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts, trade_ts, side, price, quantity
