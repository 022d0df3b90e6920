-- Compress the chunks of hypertable $1 that lie inside UTC day $2 and are not compressed yet, when
-- the day ended before the horizon of the table's compression policy (compress_after); returns how
-- many were compressed.
WITH horizon AS (
    SELECT now() - (j.config ->> 'compress_after')::interval AS before
    FROM timescaledb_information.jobs j
    WHERE j.proc_name = 'policy_compression'
      AND j.hypertable_schema = current_schema() AND j.hypertable_name = $1
), todo AS (
    SELECT c.chunk
    FROM horizon,
         show_chunks($1::regclass,
                     older_than => (($2::date + 1)::timestamp AT TIME ZONE 'UTC'),
                     newer_than => ($2::date::timestamp AT TIME ZONE 'UTC')) AS c(chunk)
    JOIN timescaledb_information.chunks i
      ON format('%I.%I', i.chunk_schema, i.chunk_name)::regclass = c.chunk
    WHERE (($2::date + 1)::timestamp AT TIME ZONE 'UTC') <= horizon.before AND NOT i.is_compressed
)
SELECT count(compress_chunk(chunk, if_not_compressed => true)) FROM todo
