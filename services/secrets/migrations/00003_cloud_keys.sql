-- +goose Up
-- Cloud accounts' secret keys (AWS secret access keys), sealed like
-- secrets: AES-256-GCM under a per-key data key wrapped by the KMS. The
-- account id and version are authenticated with the ciphertext. Only the
-- inventory writes them (with the account) and only the provisioner reads
-- them.
CREATE TABLE cloud_keys (
    cloud_account_id uuid        PRIMARY KEY,
    version          bigint      NOT NULL CHECK (version > 0),
    ciphertext       bytea       NOT NULL,
    nonce            bytea       NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key      bytea       NOT NULL,
    kms_key_id       text        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- +goose Down
DROP TABLE cloud_keys;
