-- The archive's rows of one day, COPYed here for the diff (temporary, emptied at commit).
CREATE TEMP TABLE IF NOT EXISTS reconcile_archive (
    agg_id         bigint           NOT NULL,
    ts             timestamptz      NOT NULL,
    price          double precision NOT NULL,
    quantity       double precision NOT NULL,
    first_trade_id bigint           NOT NULL,
    last_trade_id  bigint           NOT NULL,
    is_buyer_maker boolean          NOT NULL
) ON COMMIT DELETE ROWS
;
-- What the diff found (reconcile_diff.sql fills it), emptied at commit.
CREATE TEMP TABLE IF NOT EXISTS reconcile_diff (
    agg_id bigint NOT NULL, kind text NOT NULL,
    s_ts timestamptz, s_price double precision, s_quantity double precision, s_first bigint,
    s_last bigint, s_maker boolean, s_recv timestamptz,
    a_ts timestamptz, a_price double precision, a_quantity double precision, a_first bigint,
    a_last bigint, a_maker boolean
) ON COMMIT DELETE ROWS
