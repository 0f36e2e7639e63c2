-- +goose Up
-- A fleet secret may be for its templates' instances in some networks
-- only (network_ids); empty: in every network. No foreign key: the
-- inventory owns networks, and a deleted network's id stays (no instance
-- is in it; removing it would widen the secret to every network).
ALTER TABLE fleet_secrets ADD COLUMN network_ids uuid[] NOT NULL DEFAULT '{}';

-- +goose Down
ALTER TABLE fleet_secrets DROP COLUMN network_ids;
