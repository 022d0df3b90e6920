-- Open gaps of symbol $1 lying inside the archive's id range [$2, $3] after the reconciliation:
-- the archive (Binance's record of the day) does not hold those ids either.
UPDATE agg_trade_gaps SET status = 'unfillable', resolved_at = now(),
    note = coalesce(note || '; ', '') || 'absent from the archive ' || $4
WHERE symbol = $1 AND status = 'open' AND from_id >= $2 AND to_id <= $3
