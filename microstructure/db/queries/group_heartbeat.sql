-- A member's heartbeat: its lease renewed and what it collects now; the number of rows updated is 0
-- when the row is gone (removed as long dead by another member): the member joins again.
-- $1 group, $2 member, $3 owned symbols
UPDATE collector_group_members SET heartbeat_at = now(), owned = $3::text[]
WHERE group_name = $1 AND member_id = $2
