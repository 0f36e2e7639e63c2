-- +goose Up
-- Cloud accounts: the spec never holds a secret key (the secret broker
-- keeps it); networks name theirs in spec->>'cloudAccountId'.
CREATE TABLE cloud_accounts (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    spec        jsonb       NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX networks_cloud_account_id ON networks ((spec->>'cloudAccountId'));

-- +goose Down
DROP INDEX networks_cloud_account_id;
DROP TABLE cloud_accounts;
