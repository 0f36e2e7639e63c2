-- +goose Up
-- Instance lists filter by state and may order by name byte by byte (the
-- console's instances page: one page of a filtered list, not every
-- instance).
CREATE INDEX instances_state ON instances (state);
CREATE INDEX instances_name_bytes ON instances (name COLLATE "C");

-- +goose Down
DROP INDEX instances_name_bytes;
DROP INDEX instances_state;
