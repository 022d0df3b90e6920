-- open_interest: REST polls and the 5-minute metrics/openInterestHist values (source says which).
SELECT ts AS timestamp, open_interest, open_interest_value, source, recv_ts AS recv_time
FROM open_interest
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts
