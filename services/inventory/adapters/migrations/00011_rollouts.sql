-- +goose Up
-- Rollouts: one action taken to many instances a group at a time by the
-- provisioner. The spec holds its instances and how far each is; state is
-- kept beside it to find the open ones: one open rollout of an action at a
-- time.
CREATE TABLE rollouts (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    spec        jsonb       NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    action      text        NOT NULL,
    state       text        NOT NULL
);
CREATE UNIQUE INDEX rollouts_open ON rollouts (action) WHERE state IN ('running', 'paused', 'stopped');

-- +goose Down
DROP TABLE rollouts;
