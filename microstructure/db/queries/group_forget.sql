-- Rows of members dead for more than $2 seconds (default a day) are removed: status stops showing them.
DELETE FROM collector_group_members
WHERE group_name = $1 AND heartbeat_at < now() - make_interval(secs => $2)
