-- Record that dataset $1 of symbol $2, day $3 was reconciled with the archive of sha256 $4, with
-- what changed ($5 missing, $6 differing, $7 extra).
INSERT INTO archive_verified (dataset, symbol, day, sha256, verified_at, missing, differing, extra)
VALUES ($1, $2, $3, $4, now(), $5, $6, $7)
ON CONFLICT (dataset, symbol, day) DO UPDATE SET
    sha256 = excluded.sha256, verified_at = excluded.verified_at, missing = excluded.missing,
    differing = excluded.differing, extra = excluded.extra
