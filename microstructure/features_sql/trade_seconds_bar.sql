-- Quality, trade seconds: {source} (per-second trade partials, one row per second holding a trade) -> {width} bars: how
-- many of the bar's seconds hold at least one trade (quiet_s, docs/FEATURES.md).
SELECT
    symbol,
    time_bucket(INTERVAL '{width}', bucket) AS bucket,
    count(*) AS trade_seconds
FROM {source}
GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
