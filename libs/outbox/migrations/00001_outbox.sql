-- +goose Up
-- The transactional outbox, in watermill-sql's PostgreSQL schema
-- (DefaultPostgreSQLSchema with a BYTEA payload, DefaultPostgreSQLOffsetsAdapter).
-- Each row records the id of the transaction that wrote it; the forwarder
-- reads only rows of transactions older than every transaction still
-- running (pg_snapshot_xmin), in (transaction_id, offset) order, so a
-- transaction that commits late is forwarded late, never skipped.
CREATE TABLE outbox_messages (
    "offset"         bigserial,
    "uuid"           varchar(36) NOT NULL,
    "created_at"     timestamp   NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "payload"        bytea       DEFAULT NULL,
    "metadata"       json        DEFAULT NULL,
    "transaction_id" xid8        NOT NULL,
    PRIMARY KEY ("transaction_id", "offset")
);

-- How far the forwarder has got: the last row JetStream acknowledged.
CREATE TABLE outbox_offsets (
    consumer_group                varchar(255) NOT NULL,
    offset_acked                  bigint,
    last_processed_transaction_id xid8         NOT NULL,
    PRIMARY KEY (consumer_group)
);
INSERT INTO outbox_offsets (consumer_group, offset_acked, last_processed_transaction_id)
VALUES ('jetstream', 0, '0');

-- +goose Down
DROP TABLE outbox_offsets;
DROP TABLE outbox_messages;
