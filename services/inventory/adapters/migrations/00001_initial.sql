-- +goose Up
-- Resources keep their full protobuf value (as protojson) in spec; the columns
-- beside it are what queries, constraints and uniqueness need.
CREATE TABLE networks (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    spec        jsonb       NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE templates (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    spec        jsonb       NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE instances (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL UNIQUE,
    template_id   uuid        NOT NULL REFERENCES templates (id),
    network_id    uuid        NOT NULL REFERENCES networks (id),
    state         text        NOT NULL,
    desired_state text        NOT NULL,
    spec          jsonb       NOT NULL,
    version       bigint      NOT NULL CHECK (version > 0),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX instances_template_id ON instances (template_id);
CREATE INDEX instances_network_id ON instances (network_id);

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    username      text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    is_admin      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL
);

-- Bearer tokens are stored only as their SHA-256 digest.
CREATE TABLE api_tokens (
    token_hash  bytea       PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_expires_at ON api_tokens (expires_at);

-- The transactional outbox: a row is written in the same transaction as the
-- change it describes and forwarded to JetStream afterwards.
CREATE TABLE outbox (
    seq         bigserial   PRIMARY KEY,
    msg_id      text        NOT NULL,
    subject     text        NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE outbox;
DROP TABLE api_tokens;
DROP TABLE users;
DROP TABLE instances;
DROP TABLE templates;
DROP TABLE networks;
