-- A member joins (or rejoins after losing its lease): its row, heartbeat now.
-- $1 group, $2 member, $3 host, $4 pid, $5 lease timeout s, $6 redundancy, $7 universe
INSERT INTO collector_group_members
    (group_name, member_id, host, pid, lease_timeout_s, redundancy, universe, owned, started_at, heartbeat_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::text[], '{}', now(), now())
ON CONFLICT (group_name, member_id) DO UPDATE
SET heartbeat_at = now(), lease_timeout_s = EXCLUDED.lease_timeout_s, redundancy = EXCLUDED.redundancy,
    universe = EXCLUDED.universe
