-- The sha256 of the archive each day of dataset $1, symbol $2 in [$3, $4] was last reconciled with.
SELECT day, sha256 FROM archive_verified WHERE dataset = $1 AND symbol = $2 AND day BETWEEN $3 AND $4
