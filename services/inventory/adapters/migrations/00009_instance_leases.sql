-- +goose Up
-- The newest provisioner lease a record of each instance came under (see
-- RecordStateRequest.lease): a record under an older one is refused. A
-- lease is ordered by (epoch, revision): the lease bucket's creation time,
-- then the bucket's revision when the lease was taken.
CREATE TABLE instance_leases (
    instance_id uuid   PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    epoch       bigint NOT NULL,
    revision    bigint NOT NULL
);

-- +goose Down
DROP TABLE instance_leases;
