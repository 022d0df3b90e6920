-- A member stops cleanly: its row goes, so the others take its symbols at their next heartbeat
-- instead of after its lease timeout.
DELETE FROM collector_group_members WHERE group_name = $1 AND member_id = $2
