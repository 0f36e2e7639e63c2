-- +goose Up
-- The outbox moved to libs/outbox (watermill-sql's schema, created by its
-- own migrations, which run first). Rows an earlier Flotilla committed but
-- had not forwarded yet move across in their order, so an upgrade loses no
-- event and no provisioning work; then the old table goes.
INSERT INTO outbox_messages (uuid, payload, metadata, transaction_id)
SELECT o.msg_id,
       o.payload,
       (jsonb_build_object('Flotilla-Subject', o.subject) ||
        COALESCE((SELECT jsonb_object_agg(h.key, h.value ->> 0)
                  FROM jsonb_each(o.headers) h
                  WHERE h.key <> 'Nats-Msg-Id'), '{}'::jsonb))::json,
       pg_current_xact_id()
FROM outbox o
ORDER BY o.seq;
DROP TABLE outbox;

-- +goose Down
CREATE TABLE outbox (
    seq         bigserial   PRIMARY KEY,
    msg_id      text        NOT NULL,
    subject     text        NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
