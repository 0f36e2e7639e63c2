-- +goose Up
-- Uploaded TLS private keys of custom certificates (a network's or an
-- instance's), sealed like secrets: AES-256-GCM under a per-key data key
-- wrapped by the KMS. The id is the key's handle the inventory keeps in
-- the network or instance; it is authenticated with the ciphertext.
CREATE TABLE certificate_keys (
    id          uuid        PRIMARY KEY,
    ciphertext  bytea       NOT NULL,
    nonce       bytea       NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key bytea       NOT NULL,
    kms_key_id  text        NOT NULL,
    created_at  timestamptz NOT NULL
);

-- +goose Down
DROP TABLE certificate_keys;
