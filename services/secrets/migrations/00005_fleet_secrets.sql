-- +goose Up
-- Fleet secrets: one value for the agents of every instance of the
-- templates named in template_ids, sealed like an instance's secret
-- (AES-256-GCM under a per-secret data key wrapped by the KMS key named in
-- kms_key_id). The name and version are authenticated with the
-- ciphertext. No foreign key to templates: the inventory owns that table;
-- a deleted template is removed from template_ids by the broker.
CREATE TABLE fleet_secrets (
    name         text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    template_ids uuid[]      NOT NULL,
    version      bigint      NOT NULL CHECK (version > 0),
    ciphertext   bytea       NOT NULL,
    nonce        bytea       NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key  bytea       NOT NULL,
    kms_key_id   text        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- +goose Down
DROP TABLE fleet_secrets;
