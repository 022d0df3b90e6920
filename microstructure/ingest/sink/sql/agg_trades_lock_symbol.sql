-- The lock every writer of symbol $1's aggregate trades holds until its transaction ends.
SELECT pg_advisory_xact_lock(hashtext('agg_trades:' || $1))
