-- features_{tf}: one row per (symbol, bucket) of {width} bars, every FEATURES.md column.
-- The same text on every engine: the stages it reads are continuous aggregates on TimescaleDB and
-- tables kept by the incremental refresher elsewhere. What needs another bar (cvd's running sum,
-- funding_delta, oi_change_pct, carried open interest and settled funding) is computed here, and so is
-- the choice between the mark stream and the 1m klines for mark / index (the later minute wins).
WITH bars AS (  -- a bar exists when any source has a row in it
    SELECT symbol, bucket FROM trades_{tf}
    UNION SELECT symbol, bucket FROM book_{tf}
    UNION SELECT symbol, bucket FROM book_depth_{tf}
    UNION SELECT symbol, bucket FROM market_{tf}
    UNION SELECT symbol, bucket FROM market_klines_{tf}
    UNION SELECT symbol, bucket FROM open_interest_{tf}
    UNION SELECT symbol, bucket FROM liquidations_{tf}
),
spread AS (  -- sample std of the spread: the 1m bars' (n, mean, M2) combined (Chan, Golub, LeVeque)
    SELECT symbol, bucket,
           CASE WHEN n >= 2 THEN sqrt(greatest(m2, 0) / (n - 1)) END AS spread_std
    FROM (
        SELECT symbol, bar AS bucket, sum(spread_n) AS n,
               sum(spread_m2 + spread_n * (spread_sum / spread_n - grand_mean) ^ 2 ORDER BY bucket) AS m2
        FROM (  -- sums in bucket order: the same digits whatever plan a query gets
            SELECT symbol, bucket, time_bucket(INTERVAL '{width}', bucket) AS bar, spread_n, spread_sum, spread_m2,
                   sum(spread_sum) OVER w / sum(spread_n) OVER w AS grand_mean
            FROM book_1m
            WHERE spread_n > 0
            WINDOW w AS (PARTITION BY symbol, time_bucket(INTERVAL '{width}', bucket) ORDER BY bucket
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ) parts
        GROUP BY symbol, bar
    ) combined
),
-- Book depth bands (docs/FEATURES.md "Book depth bands"): per band and side the mean over the bar's
-- snapshots of the cumulative depth (bd/ad) and notional (bn/an); the imbalances are of those means
depth AS (
    SELECT symbol, bucket,
           (bd_0p2 - ad_0p2) / nullif(bd_0p2 + ad_0p2, 0) AS depth_imbalance_0p2pct,
           (bd_1 - ad_1) / nullif(bd_1 + ad_1, 0) AS depth_imbalance_1pct,
           (bd_2 - ad_2) / nullif(bd_2 + ad_2, 0) AS depth_imbalance_2pct,
           (bd_3 - ad_3) / nullif(bd_3 + ad_3, 0) AS depth_imbalance_3pct,
           (bd_4 - ad_4) / nullif(bd_4 + ad_4, 0) AS depth_imbalance_4pct,
           (bd_5 - ad_5) / nullif(bd_5 + ad_5, 0) AS depth_imbalance_5pct,
           (bn_0p2 - an_0p2) / nullif(bn_0p2 + an_0p2, 0) AS notional_imbalance_0p2pct,
           (bn_1 - an_1) / nullif(bn_1 + an_1, 0) AS notional_imbalance_1pct,
           (bn_2 - an_2) / nullif(bn_2 + an_2, 0) AS notional_imbalance_2pct,
           (bn_3 - an_3) / nullif(bn_3 + an_3, 0) AS notional_imbalance_3pct,
           (bn_4 - an_4) / nullif(bn_4 + an_4, 0) AS notional_imbalance_4pct,
           (bn_5 - an_5) / nullif(bn_5 + an_5, 0) AS notional_imbalance_5pct,
           bd_0p2 AS bid_depth_0p2pct, bd_1 AS bid_depth_1pct, bd_2 AS bid_depth_2pct,
           bd_3 AS bid_depth_3pct, bd_4 AS bid_depth_4pct, bd_5 AS bid_depth_5pct,
           ad_0p2 AS ask_depth_0p2pct, ad_1 AS ask_depth_1pct, ad_2 AS ask_depth_2pct,
           ad_3 AS ask_depth_3pct, ad_4 AS ask_depth_4pct, ad_5 AS ask_depth_5pct
    FROM (
        SELECT symbol, bucket,
               bid_depth_0p2_sum / nullif(bid_0p2_n, 0) AS bd_0p2,
               bid_notional_0p2_sum / nullif(bid_0p2_n, 0) AS bn_0p2,
               ask_depth_0p2_sum / nullif(ask_0p2_n, 0) AS ad_0p2,
               ask_notional_0p2_sum / nullif(ask_0p2_n, 0) AS an_0p2,
               bid_depth_1_sum / nullif(bid_1_n, 0) AS bd_1,
               bid_notional_1_sum / nullif(bid_1_n, 0) AS bn_1,
               ask_depth_1_sum / nullif(ask_1_n, 0) AS ad_1,
               ask_notional_1_sum / nullif(ask_1_n, 0) AS an_1,
               bid_depth_2_sum / nullif(bid_2_n, 0) AS bd_2,
               bid_notional_2_sum / nullif(bid_2_n, 0) AS bn_2,
               ask_depth_2_sum / nullif(ask_2_n, 0) AS ad_2,
               ask_notional_2_sum / nullif(ask_2_n, 0) AS an_2,
               bid_depth_3_sum / nullif(bid_3_n, 0) AS bd_3,
               bid_notional_3_sum / nullif(bid_3_n, 0) AS bn_3,
               ask_depth_3_sum / nullif(ask_3_n, 0) AS ad_3,
               ask_notional_3_sum / nullif(ask_3_n, 0) AS an_3,
               bid_depth_4_sum / nullif(bid_4_n, 0) AS bd_4,
               bid_notional_4_sum / nullif(bid_4_n, 0) AS bn_4,
               ask_depth_4_sum / nullif(ask_4_n, 0) AS ad_4,
               ask_notional_4_sum / nullif(ask_4_n, 0) AS an_4,
               bid_depth_5_sum / nullif(bid_5_n, 0) AS bd_5,
               bid_notional_5_sum / nullif(bid_5_n, 0) AS bn_5,
               ask_depth_5_sum / nullif(ask_5_n, 0) AS ad_5,
               ask_notional_5_sum / nullif(ask_5_n, 0) AS an_5
        FROM book_depth_{tf}
    ) means
),
-- Quality (docs/FEATURES.md "Quality"): the id gaps not filled, each with the time span its missing
-- ids can lie in (quality_gap_spans.sql). Gaps change after the bars are materialised: read here.
gap_spans AS MATERIALIZED (SELECT * FROM microstructure_gap_spans()),
trade_bounds AS MATERIALIZED (SELECT * FROM microstructure_trade_bounds()),  -- quality_trade_bounds.sql
resyncs AS (  -- book resyncs the collectors recorded, at the exchange time of the break when known
    SELECT symbol,
           time_bucket(INTERVAL '{width}', CASE WHEN jsonb_typeof(detail -> 'T') = 'number'
               THEN to_timestamp((detail ->> 'T')::double precision / 1000) ELSE ts END) AS bucket,
           count(*) AS resyncs
    FROM ingest_events
    WHERE kind = 'resync' AND symbol IS NOT NULL
    GROUP BY 1, 2
),
core AS (
    SELECT
        b.symbol,
        b.bucket,
        b.bucket + INTERVAL '{width}' AS bucket_end,
        t.open, t.high, t.low, t.close,
        t.volume, t.quote_volume, t.trade_count, t.fill_count, t.buy_volume, t.sell_volume,
        t.buy_volume - t.sell_volume AS volume_delta,
        CASE WHEN t.symbol IS NOT NULL THEN sum(t.buy_volume - t.sell_volume) OVER day END AS cvd,
        t.quote_volume / nullif(t.volume, 0) AS vwap,
        t.buy_volume / nullif(t.volume, 0) AS buy_pressure,
        i.max_1s::double precision AS trade_intensity_1s,
        i.max_5s::double precision / 5 AS trade_intensity_5s,
        i.max_10s::double precision / 10 AS trade_intensity_10s,
        t.large_trade_count, t.large_trade_volume,
        t.large_trade_volume / nullif(t.volume, 0) AS large_trade_pct,
        k.imbalance_5_sum / nullif(k.imbalance_5_n, 0) AS imbalance_5,
        k.imbalance_10_sum / nullif(k.imbalance_10_n, 0) AS imbalance_10,
        k.imbalance_20_sum / nullif(k.imbalance_20_n, 0) AS imbalance_20,
        k.spread_sum / nullif(k.spread_n, 0) AS spread_avg,
        s.spread_std,
        k.spread_bps_sum / nullif(k.spread_bps_n, 0) AS spread_bps_avg,
        k.weighted_mid_diff_bps_sum / nullif(k.weighted_mid_diff_bps_n, 0) AS weighted_mid_diff_bps,
        k.bid_slope_sum / nullif(k.bid_slope_n, 0) AS bid_slope,
        k.ask_slope_sum / nullif(k.ask_slope_n, 0) AS ask_slope,
        k.bid_vol_ratio_5_20_sum / nullif(k.bid_vol_ratio_5_20_n, 0) AS bid_vol_ratio_5_20,
        k.ask_vol_ratio_5_20_sum / nullif(k.ask_vol_ratio_5_20_n, 0) AS ask_vol_ratio_5_20,
        k.ofi,
        k.snapshot_count,
        -- the bar's last value: from the stream when its last value lies in the same minute as the
        -- klines' last minute or later (or there is no kline), else the close of the last kline
        CASE WHEN m.mark_ts IS NOT NULL AND (kl.mark_ts IS NULL OR floor(m.mark_ts / 60) >= floor(kl.mark_ts / 60))
             THEN m.mark_price ELSE kl.mark_price END AS mark_price,
        CASE WHEN m.index_ts IS NOT NULL AND (kl.index_ts IS NULL OR floor(m.index_ts / 60) >= floor(kl.index_ts / 60))
             THEN m.index_price ELSE kl.index_price END AS index_price,
        m.funding_rate AS funding_rate_predicted,
        l.liq_long_vol, l.liq_short_vol,
        l.liq_long_vol / nullif(l.liq_long_vol + l.liq_short_vol, 0) AS liq_ratio,
        k.book_slots, m.mark_seconds  -- quality
    FROM bars b
    LEFT JOIN trades_{tf} t ON t.symbol = b.symbol AND t.bucket = b.bucket
    LEFT JOIN trade_intensity_{tf} i ON i.symbol = b.symbol AND i.bucket = b.bucket
    LEFT JOIN book_{tf} k ON k.symbol = b.symbol AND k.bucket = b.bucket
    LEFT JOIN spread s ON s.symbol = b.symbol AND s.bucket = b.bucket
    LEFT JOIN market_{tf} m ON m.symbol = b.symbol AND m.bucket = b.bucket
    LEFT JOIN market_klines_{tf} kl ON kl.symbol = b.symbol AND kl.bucket = b.bucket
    LEFT JOIN liquidations_{tf} l ON l.symbol = b.symbol AND l.bucket = b.bucket
    WINDOW day AS (PARTITION BY b.symbol, time_bucket(INTERVAL '1 day', b.bucket) ORDER BY b.bucket)
)
SELECT
    c.symbol, c.bucket, c.bucket_end,
    c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trade_count, c.fill_count,
    c.buy_volume, c.sell_volume, c.volume_delta, c.cvd, c.vwap, c.buy_pressure,
    c.trade_intensity_1s, c.trade_intensity_5s, c.trade_intensity_10s,
    c.large_trade_count, c.large_trade_volume, c.large_trade_pct,
    c.imbalance_5, c.imbalance_10, c.imbalance_20, c.spread_avg, c.spread_std, c.spread_bps_avg,
    c.weighted_mid_diff_bps, c.bid_slope, c.ask_slope, c.bid_vol_ratio_5_20, c.ask_vol_ratio_5_20,
    c.ofi, c.snapshot_count,
    d.depth_imbalance_0p2pct, d.depth_imbalance_1pct, d.depth_imbalance_2pct,
    d.depth_imbalance_3pct, d.depth_imbalance_4pct, d.depth_imbalance_5pct,
    d.notional_imbalance_0p2pct, d.notional_imbalance_1pct, d.notional_imbalance_2pct,
    d.notional_imbalance_3pct, d.notional_imbalance_4pct, d.notional_imbalance_5pct,
    d.bid_depth_0p2pct, d.bid_depth_1pct, d.bid_depth_2pct,
    d.bid_depth_3pct, d.bid_depth_4pct, d.bid_depth_5pct,
    d.ask_depth_0p2pct, d.ask_depth_1pct, d.ask_depth_2pct,
    d.ask_depth_3pct, d.ask_depth_4pct, d.ask_depth_5pct,
    c.mark_price, c.index_price, (c.mark_price - c.index_price) / nullif(c.index_price, 0) * 100 AS spot_premium_pct,
    fs.funding_rate, c.funding_rate_predicted, fs.funding_rate - fp.funding_rate AS funding_delta,
    oi.open_interest,
    (oi.open_interest - poi.open_interest) / nullif(poi.open_interest, 0) * 100 AS oi_change_pct,
    c.liq_long_vol, c.liq_short_vol, c.liq_ratio,
    -- quality (docs/FEATURES.md "Quality")
    coalesce(gq.ids, 0)::bigint AS trade_ids_missing,
    (coalesce(gq.ids, 0) = 0 AND ch.known) AS trades_complete,
    coalesce(c.book_slots, 0)::double precision / (2 * date_part('epoch', INTERVAL '{width}')) AS book_coverage,
    coalesce(rs.resyncs, 0)::bigint AS book_resyncs,
    coalesce(c.mark_seconds, 0)::double precision / date_part('epoch', INTERVAL '{width}') AS mark_coverage,
    date_part('epoch', c.bucket_end - oi.oi_last_ts) AS oi_age_s,
    CASE WHEN ch.known THEN greatest(
        date_part('epoch', INTERVAL '{width}') - coalesce(tsec.trade_seconds, 0) - coalesce(gq.gap_seconds, 0), 0
    ) END AS quiet_s
FROM core c
LEFT JOIN depth d ON d.symbol = c.symbol AND d.bucket = c.bucket  -- book depth bands
-- the last settled rate before this bar's end, and before the previous bar's end
LEFT JOIN LATERAL (
    SELECT f.funding_rate FROM funding_rates f
    WHERE f.symbol = c.symbol AND f.funding_ts < c.bucket_end ORDER BY f.funding_ts DESC LIMIT 1
) fs ON true
LEFT JOIN LATERAL (
    SELECT f.funding_rate FROM funding_rates f
    WHERE f.symbol = c.symbol AND f.funding_ts < c.bucket ORDER BY f.funding_ts DESC LIMIT 1
) fp ON true
-- open interest: the last observation before this bar's end, and before the previous bar's end
LEFT JOIN LATERAL (
    SELECT o.open_interest, o.oi_last_ts FROM open_interest_{tf} o
    WHERE o.symbol = c.symbol AND o.bucket <= c.bucket ORDER BY o.bucket DESC LIMIT 1
) oi ON true
LEFT JOIN LATERAL (
    SELECT o.open_interest FROM open_interest_{tf} o
    WHERE o.symbol = c.symbol AND o.bucket < c.bucket ORDER BY o.bucket DESC LIMIT 1
) poi ON true
-- quality: seconds holding a trade; resyncs; the gaps whose span meets the bar (each counts all its
-- ids in every bar it meets) and the bar's seconds strictly inside a gap's span (no trade stored
-- there, none known to be absent); the trade stream known on both sides of the bar
LEFT JOIN trade_seconds_{tf} tsec ON tsec.symbol = c.symbol AND tsec.bucket = c.bucket
LEFT JOIN resyncs rs ON rs.symbol = c.symbol AND rs.bucket = c.bucket
LEFT JOIN LATERAL (
    SELECT sum(g.ids) AS ids,
           sum(greatest(0, least(floor(date_part('epoch', g.t1)), date_part('epoch', c.bucket_end))
                           - greatest(floor(date_part('epoch', g.t0)) + 1, date_part('epoch', c.bucket)))) AS gap_seconds
    FROM gap_spans g
    WHERE g.symbol = c.symbol AND g.t0 < c.bucket_end AND g.t1 >= c.bucket
) gq ON true
LEFT JOIN trade_bounds tb ON tb.symbol = c.symbol
LEFT JOIN LATERAL (
    SELECT coalesce(tb.first_ts < c.bucket AND tb.last_ts >= c.bucket_end, false) AS known
) ch ON true
