-- Coverage describes what is stored: the rows of the days dropped go with them.
DELETE FROM agg_trade_coverage WHERE day < $1
