-- Book, stage 1: book_snapshots -> {width} bars. Each per-snapshot value (computed when the snapshot
-- was written, FEATURES.md) is carried as its sum and count of non-NULL values, so that bar means skip
-- NULLs as AVG does and combine exactly; spread also carries its sum of squared deviations (M2) for the
-- standard deviation; ofi sums the stored per-snapshot terms (NULL when the bar has none).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', ts) AS bucket,
    count(*) AS snapshot_count,
    count(spread) AS spread_n,
    sum(spread) AS spread_sum,
    count(spread_bps) AS spread_bps_n,
    sum(spread_bps) AS spread_bps_sum,
    count(weighted_mid_diff_bps) AS weighted_mid_diff_bps_n,
    sum(weighted_mid_diff_bps) AS weighted_mid_diff_bps_sum,
    count(imbalance_5) AS imbalance_5_n,
    sum(imbalance_5) AS imbalance_5_sum,
    count(imbalance_10) AS imbalance_10_n,
    sum(imbalance_10) AS imbalance_10_sum,
    count(imbalance_20) AS imbalance_20_n,
    sum(imbalance_20) AS imbalance_20_sum,
    count(bid_slope) AS bid_slope_n,
    sum(bid_slope) AS bid_slope_sum,
    count(ask_slope) AS ask_slope_n,
    sum(ask_slope) AS ask_slope_sum,
    count(bid_vol_ratio_5_20) AS bid_vol_ratio_5_20_n,
    sum(bid_vol_ratio_5_20) AS bid_vol_ratio_5_20_sum,
    count(ask_vol_ratio_5_20) AS ask_vol_ratio_5_20_n,
    sum(ask_vol_ratio_5_20) AS ask_vol_ratio_5_20_sum,
    coalesce(var_samp(spread) * (count(spread) - 1), 0) AS spread_m2,
    sum(ofi) AS ofi,
    -- quality: distinct epoch-aligned 500 ms slots holding a snapshot (book_coverage, docs/FEATURES.md)
    count(DISTINCT time_bucket(INTERVAL '500 milliseconds', ts)) AS book_slots
FROM book_snapshots
GROUP BY symbol, time_bucket(INTERVAL '{width}', ts)
