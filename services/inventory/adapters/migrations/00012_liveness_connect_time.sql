-- +goose Up
-- When an agent's newest stream began, when that stream's connect was
-- taken as a heartbeat (the instance row showed the agent connected
-- already, at the same version on the same VM: its agent gateway restarted
-- or it moved to another): a disconnect of an older stream, reported late,
-- is then told from one of the newest. NULL: no such connect since the row
-- was written.
ALTER TABLE instance_liveness ADD COLUMN connected_at timestamptz;

-- +goose Down
ALTER TABLE instance_liveness DROP COLUMN connected_at;
