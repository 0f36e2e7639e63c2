-- +goose Up
-- Runs of failed logins per user name (existing or not): the inventory makes
-- the next login wait longer after each failure beyond the first few.
CREATE TABLE login_failures (
    username     text        PRIMARY KEY,
    failures     integer     NOT NULL,
    last_failure timestamptz NOT NULL
);
CREATE INDEX login_failures_last_failure ON login_failures (last_failure);

-- +goose Down
DROP TABLE login_failures;
