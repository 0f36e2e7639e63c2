-- +goose Up
-- One row per secret bound to an instance. The value is never stored: only
-- its AES-256-GCM ciphertext under a per-secret data key (nonce beside it),
-- and that data key wrapped by the KMS key named in kms_key_id. The instance
-- id, name and version are authenticated with the ciphertext, so a row's
-- ciphertext cannot be moved to another secret or version.
-- No foreign key to instances: the inventory owns that table, possibly in
-- another database.
CREATE TABLE secrets (
    instance_id uuid        NOT NULL,
    name        text        NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    version     bigint      NOT NULL CHECK (version > 0),
    ciphertext  bytea       NOT NULL,
    nonce       bytea       NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key bytea       NOT NULL,
    kms_key_id  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (instance_id, name)
);

-- +goose Down
DROP TABLE secrets;
