-- Is any aggregate id of [$2[i], $3[i]] already stored for symbol $1[i], for any i? (the writer's
-- direct-COPY test, for every symbol of a flush at once)
SELECT EXISTS (
    SELECT 1 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(symbol, lo, hi)
    WHERE EXISTS (SELECT 1 FROM agg_trades a WHERE a.symbol = u.symbol AND a.agg_id BETWEEN u.lo AND u.hi)
)
