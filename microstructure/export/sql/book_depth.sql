-- book_depth: the 500 ms top-20 snapshots (timestamp = transaction time T), levels best first, and the
-- per-snapshot values the book features use.
SELECT ts AS timestamp, event_ts AS event_time, first_update_id, last_update_id, prev_update_id, source,
       bid_px, bid_qty, ask_px, ask_qty, mid, spread, spread_bps, weighted_mid_diff_bps,
       imbalance_5, imbalance_10, imbalance_20, bid_slope, ask_slope, bid_vol_ratio_5_20, ask_vol_ratio_5_20,
       ofi, recv_ts AS recv_time
FROM book_snapshots
WHERE symbol = $1 AND ts >= $2 AND ts < $3
ORDER BY ts, last_update_id
