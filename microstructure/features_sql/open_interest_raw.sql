-- Open interest, stage 1: the last observation in each {width} bar (the view carries it over quiet
-- bars: the last observation before a bar's end).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    (max(ARRAY[date_part('epoch', ts AT TIME ZONE 'UTC'), open_interest]))[2] AS open_interest,
    count(*) AS oi_count,
    -- quality: the time of the bar's last observation, the one the view carries (oi_age_s)
    max(ts) AS oi_last_ts
FROM open_interest
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
