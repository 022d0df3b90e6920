-- `microstructure status`, collector groups: every member, alive or not, by its own lease timeout.
SELECT group_name, member_id, host, pid, started_at, heartbeat_at, redundancy,
       cardinality(universe) AS universe_size, cardinality(owned) AS owned_count, owned,
       extract(epoch FROM now() - heartbeat_at)::double precision AS seconds_since_heartbeat,
       heartbeat_at > now() - make_interval(secs => lease_timeout_s) AS alive
FROM collector_group_members
ORDER BY group_name, host, pid, member_id
