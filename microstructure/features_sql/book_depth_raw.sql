-- Book depth bands, stage 1: book_depth_bands (the bookDepth archive: cumulative depth and notional
-- within +-b % of mid, a snapshot about every 30 s) -> {width} bars. For each band the file recorded
-- (b = 0.2 in 2026 files, 1..5; bids at -b, asks at +b) and side: the sums of depth and notional over
-- the bar's snapshots and their number, so that the bar means combine exactly 1m -> 5m -> 15m
-- (docs/FEATURES.md "Book depth bands"). A band the bar has no row of has n = 0 and NULL sums.
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    sum(CASE WHEN percentage = -0.2 THEN depth END) AS bid_depth_0p2_sum,
    sum(CASE WHEN percentage = -0.2 THEN notional END) AS bid_notional_0p2_sum,
    count(CASE WHEN percentage = -0.2 THEN 1 END) AS bid_0p2_n,
    sum(CASE WHEN percentage = 0.2 THEN depth END) AS ask_depth_0p2_sum,
    sum(CASE WHEN percentage = 0.2 THEN notional END) AS ask_notional_0p2_sum,
    count(CASE WHEN percentage = 0.2 THEN 1 END) AS ask_0p2_n,
    sum(CASE WHEN percentage = -1 THEN depth END) AS bid_depth_1_sum,
    sum(CASE WHEN percentage = -1 THEN notional END) AS bid_notional_1_sum,
    count(CASE WHEN percentage = -1 THEN 1 END) AS bid_1_n,
    sum(CASE WHEN percentage = 1 THEN depth END) AS ask_depth_1_sum,
    sum(CASE WHEN percentage = 1 THEN notional END) AS ask_notional_1_sum,
    count(CASE WHEN percentage = 1 THEN 1 END) AS ask_1_n,
    sum(CASE WHEN percentage = -2 THEN depth END) AS bid_depth_2_sum,
    sum(CASE WHEN percentage = -2 THEN notional END) AS bid_notional_2_sum,
    count(CASE WHEN percentage = -2 THEN 1 END) AS bid_2_n,
    sum(CASE WHEN percentage = 2 THEN depth END) AS ask_depth_2_sum,
    sum(CASE WHEN percentage = 2 THEN notional END) AS ask_notional_2_sum,
    count(CASE WHEN percentage = 2 THEN 1 END) AS ask_2_n,
    sum(CASE WHEN percentage = -3 THEN depth END) AS bid_depth_3_sum,
    sum(CASE WHEN percentage = -3 THEN notional END) AS bid_notional_3_sum,
    count(CASE WHEN percentage = -3 THEN 1 END) AS bid_3_n,
    sum(CASE WHEN percentage = 3 THEN depth END) AS ask_depth_3_sum,
    sum(CASE WHEN percentage = 3 THEN notional END) AS ask_notional_3_sum,
    count(CASE WHEN percentage = 3 THEN 1 END) AS ask_3_n,
    sum(CASE WHEN percentage = -4 THEN depth END) AS bid_depth_4_sum,
    sum(CASE WHEN percentage = -4 THEN notional END) AS bid_notional_4_sum,
    count(CASE WHEN percentage = -4 THEN 1 END) AS bid_4_n,
    sum(CASE WHEN percentage = 4 THEN depth END) AS ask_depth_4_sum,
    sum(CASE WHEN percentage = 4 THEN notional END) AS ask_notional_4_sum,
    count(CASE WHEN percentage = 4 THEN 1 END) AS ask_4_n,
    sum(CASE WHEN percentage = -5 THEN depth END) AS bid_depth_5_sum,
    sum(CASE WHEN percentage = -5 THEN notional END) AS bid_notional_5_sum,
    count(CASE WHEN percentage = -5 THEN 1 END) AS bid_5_n,
    sum(CASE WHEN percentage = 5 THEN depth END) AS ask_depth_5_sum,
    sum(CASE WHEN percentage = 5 THEN notional END) AS ask_notional_5_sum,
    count(CASE WHEN percentage = 5 THEN 1 END) AS ask_5_n
FROM book_depth_bands
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
