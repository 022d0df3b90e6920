-- Book, roll-up: {source} bars -> {width} bars (sums and counts combine exactly; the spread's
-- standard deviation is combined from the 1m bars' n, mean and M2 in the feature view).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    sum(snapshot_count)::bigint AS snapshot_count,
    sum(spread_n)::bigint AS spread_n,
    sum(spread_sum) AS spread_sum,
    sum(spread_bps_n)::bigint AS spread_bps_n,
    sum(spread_bps_sum) AS spread_bps_sum,
    sum(weighted_mid_diff_bps_n)::bigint AS weighted_mid_diff_bps_n,
    sum(weighted_mid_diff_bps_sum) AS weighted_mid_diff_bps_sum,
    sum(imbalance_5_n)::bigint AS imbalance_5_n,
    sum(imbalance_5_sum) AS imbalance_5_sum,
    sum(imbalance_10_n)::bigint AS imbalance_10_n,
    sum(imbalance_10_sum) AS imbalance_10_sum,
    sum(imbalance_20_n)::bigint AS imbalance_20_n,
    sum(imbalance_20_sum) AS imbalance_20_sum,
    sum(bid_slope_n)::bigint AS bid_slope_n,
    sum(bid_slope_sum) AS bid_slope_sum,
    sum(ask_slope_n)::bigint AS ask_slope_n,
    sum(ask_slope_sum) AS ask_slope_sum,
    sum(bid_vol_ratio_5_20_n)::bigint AS bid_vol_ratio_5_20_n,
    sum(bid_vol_ratio_5_20_sum) AS bid_vol_ratio_5_20_sum,
    sum(ask_vol_ratio_5_20_n)::bigint AS ask_vol_ratio_5_20_n,
    sum(ask_vol_ratio_5_20_sum) AS ask_vol_ratio_5_20_sum,
    sum(ofi) AS ofi,
    sum(book_slots)::bigint AS book_slots  -- slots never straddle a bar: the sum is exact
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
