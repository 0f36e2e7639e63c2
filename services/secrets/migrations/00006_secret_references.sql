-- +goose Up
-- A secret (an instance's or a fleet secret) may be a reference to an AWS
-- Secrets Manager secret, read at each read in the cloud account of the
-- reading instance's network, instead of a value sealed here: such a row
-- has secrets_manager_id and no sealed columns; every other row has the
-- sealed columns and no secrets_manager_id.
ALTER TABLE secrets
    ADD COLUMN secrets_manager_id text CHECK (secrets_manager_id ~ '^[A-Za-z0-9/_+=.@:!-]+$' AND length(secrets_manager_id) <= 2048),
    ALTER COLUMN ciphertext DROP NOT NULL,
    ALTER COLUMN nonce DROP NOT NULL,
    ALTER COLUMN wrapped_key DROP NOT NULL,
    ALTER COLUMN kms_key_id DROP NOT NULL,
    ADD CONSTRAINT secrets_value_or_reference CHECK ((secrets_manager_id IS NULL) = (ciphertext IS NOT NULL AND nonce IS NOT NULL AND wrapped_key IS NOT NULL AND kms_key_id IS NOT NULL));
ALTER TABLE fleet_secrets
    ADD COLUMN secrets_manager_id text CHECK (secrets_manager_id ~ '^[A-Za-z0-9/_+=.@:!-]+$' AND length(secrets_manager_id) <= 2048),
    ALTER COLUMN ciphertext DROP NOT NULL,
    ALTER COLUMN nonce DROP NOT NULL,
    ALTER COLUMN wrapped_key DROP NOT NULL,
    ALTER COLUMN kms_key_id DROP NOT NULL,
    ADD CONSTRAINT fleet_secrets_value_or_reference CHECK ((secrets_manager_id IS NULL) = (ciphertext IS NOT NULL AND nonce IS NOT NULL AND wrapped_key IS NOT NULL AND kms_key_id IS NOT NULL));

-- +goose Down
DELETE FROM secrets WHERE secrets_manager_id IS NOT NULL;
DELETE FROM fleet_secrets WHERE secrets_manager_id IS NOT NULL;
ALTER TABLE secrets DROP CONSTRAINT secrets_value_or_reference, DROP COLUMN secrets_manager_id,
    ALTER COLUMN ciphertext SET NOT NULL, ALTER COLUMN nonce SET NOT NULL, ALTER COLUMN wrapped_key SET NOT NULL, ALTER COLUMN kms_key_id SET NOT NULL;
ALTER TABLE fleet_secrets DROP CONSTRAINT fleet_secrets_value_or_reference, DROP COLUMN secrets_manager_id,
    ALTER COLUMN ciphertext SET NOT NULL, ALTER COLUMN nonce SET NOT NULL, ALTER COLUMN wrapped_key SET NOT NULL, ALTER COLUMN kms_key_id SET NOT NULL;
