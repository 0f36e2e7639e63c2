-- +goose Up
-- ACME account keys, one per network (every agent of the network orders
-- with its account), sealed like secrets: AES-256-GCM under a per-key data
-- key wrapped by the KMS; the network id is authenticated with the
-- ciphertext and bound to the data key. The broker makes one the first
-- time the CA asks for it; it goes with the network.
CREATE TABLE acme_accounts (
    network_id  uuid        PRIMARY KEY,
    ciphertext  bytea       NOT NULL,
    nonce       bytea       NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key bytea       NOT NULL,
    kms_key_id  text        NOT NULL,
    created_at  timestamptz NOT NULL
);

-- The ACME certificate kept for each instance, so a new VM of the instance
-- serves it instead of ordering again: the chain (public) as it is, its
-- private key sealed like secrets (the instance id and the chain's SHA-256
-- authenticated with the ciphertext, the instance id bound to the data
-- key). It goes with the instance.
CREATE TABLE acme_certificates (
    instance_id     uuid        PRIMARY KEY,
    network_id      uuid        NOT NULL,
    directory_url   text        NOT NULL,
    certificate_pem text        NOT NULL,
    not_after       timestamptz NOT NULL,
    ciphertext      bytea       NOT NULL,
    nonce           bytea       NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key     bytea       NOT NULL,
    kms_key_id      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX acme_certificates_network_id ON acme_certificates (network_id);

-- +goose Down
DROP TABLE acme_certificates;
DROP TABLE acme_accounts;
