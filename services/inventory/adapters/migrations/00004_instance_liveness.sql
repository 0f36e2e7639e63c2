-- +goose Up
-- An agent's latest heartbeat, kept apart from the instance row: heartbeats
-- arrive every few seconds from every agent and are written here in batches,
-- while the instance row changes only when something an operator sees does.
-- Rows of deleted instances are swept by the inventory's housekeeping.
CREATE TABLE instance_liveness (
    instance_id    uuid        PRIMARY KEY,
    last_heartbeat timestamptz NOT NULL,
    disk_used      bigint      NOT NULL,
    disk_total     bigint      NOT NULL
);

-- +goose Down
DROP TABLE instance_liveness;
