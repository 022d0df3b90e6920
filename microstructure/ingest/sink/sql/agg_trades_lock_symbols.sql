-- The locks every writer of the symbols $1's aggregate trades holds until its transaction ends
-- (agg_trades_lock_symbol.sql's, one per symbol), taken in name order so two flushes never deadlock.
SELECT count(pg_advisory_xact_lock(hashtext('agg_trades:' || s)))
FROM (SELECT DISTINCT s FROM unnest($1::text[]) AS u(s) ORDER BY s) x
