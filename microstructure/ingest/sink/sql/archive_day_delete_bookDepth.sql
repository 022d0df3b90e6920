-- The stored bookDepth bands of symbol $1 in [$2, $3), before the day's archive is loaded again.
DELETE FROM book_depth_bands WHERE symbol = $1 AND ts >= $2 AND ts < $3
