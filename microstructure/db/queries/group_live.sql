-- The live members of a group (heartbeat within $2 seconds of the database's now()) and their
-- universes, in a stable order.
SELECT member_id, universe, redundancy
FROM collector_group_members
WHERE group_name = $1 AND heartbeat_at > now() - make_interval(secs => $2)
ORDER BY member_id
