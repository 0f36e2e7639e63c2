-- +goose Up
-- Roles replace is_admin: admins stay admins; anyone else (nobody could be
-- made so before roles) becomes a viewer.
ALTER TABLE users
    ADD COLUMN role text CHECK (role IN ('admin', 'operator', 'viewer')),
    ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version > 0),
    ADD COLUMN updated_at timestamptz,
    ADD COLUMN must_change_password boolean NOT NULL DEFAULT false;
UPDATE users SET role = CASE WHEN is_admin THEN 'admin' ELSE 'viewer' END, updated_at = created_at;
ALTER TABLE users
    ALTER COLUMN role SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL,
    DROP COLUMN is_admin;
CREATE INDEX users_admins ON users (id) WHERE role = 'admin';

-- Tokens: login sessions (their user's role) and API tokens (a name and a
-- role of their own, never more than their user's; when last used).
ALTER TABLE api_tokens
    ADD COLUMN id uuid,
    ADD COLUMN kind text NOT NULL DEFAULT 'session' CHECK (kind IN ('session', 'api')),
    ADD COLUMN name text,
    ADD COLUMN role text CHECK (role IN ('admin', 'operator', 'viewer')),
    ADD COLUMN last_used_at timestamptz,
    ADD CONSTRAINT api_tokens_api_named CHECK (kind = 'session' OR (name IS NOT NULL AND role IS NOT NULL));
UPDATE api_tokens SET id = gen_random_uuid();
ALTER TABLE api_tokens ALTER COLUMN id SET NOT NULL, ALTER COLUMN kind DROP DEFAULT;
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (user_id, name) WHERE kind = 'api' AND revoked_at IS NULL;

-- The audit trail as GET /api/v1/audit reads it: every record of
-- FLOTILLA_AUDIT, projected once by the inventory's durable consumer (the
-- id is the record's message id, so a redelivery changes nothing).
CREATE TABLE audit_records (
    id        text        PRIMARY KEY,
    at        timestamptz NOT NULL,
    kind      text        NOT NULL,
    action    text        NOT NULL,
    actor     text        NOT NULL,
    username  text        NOT NULL,
    user_id   text        NOT NULL,
    role      text        NOT NULL,
    target    text        NOT NULL,
    status    integer     NOT NULL,
    result    text        NOT NULL,
    source    text        NOT NULL,
    trace_id  text        NOT NULL,
    detail    text        NOT NULL
);
CREATE INDEX audit_records_at ON audit_records (at DESC, id DESC);
CREATE INDEX audit_records_username ON audit_records (username, at DESC, id DESC);
CREATE INDEX audit_records_user_id ON audit_records (user_id, at DESC, id DESC);
CREATE INDEX audit_records_target ON audit_records (target, at DESC, id DESC);

-- +goose Down
DROP TABLE audit_records;
DELETE FROM api_tokens WHERE kind = 'api';
DROP INDEX api_tokens_live_name;
DROP INDEX api_tokens_user_id;
DROP INDEX api_tokens_id;
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_api_named,
    DROP COLUMN last_used_at, DROP COLUMN role, DROP COLUMN name, DROP COLUMN kind, DROP COLUMN id;
ALTER TABLE users ADD COLUMN is_admin boolean NOT NULL DEFAULT false;
UPDATE users SET is_admin = (role = 'admin');
DROP INDEX users_admins;
ALTER TABLE users DROP COLUMN must_change_password, DROP COLUMN updated_at, DROP COLUMN version, DROP COLUMN role;
