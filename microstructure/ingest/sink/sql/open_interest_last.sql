-- The time (epoch ms) of the last stored open-interest row (any source) of each of symbols $1;
-- NULL for a symbol without one. One index probe per symbol (primary key symbol, ts).
SELECT s.symbol,
       (SELECT (date_part('epoch', max(o.ts)) * 1000)::bigint FROM open_interest o WHERE o.symbol = s.symbol)
           AS last_ms
FROM unnest($1::text[]) AS s(symbol)
