-- +goose Up
-- assignPublicIp and the Route53 zones (dns.privateZoneId, dns.publicZoneId)
-- are refused on networks of providers other than aws: only the aws driver
-- gives public addresses and writes Route53 records, so elsewhere they did
-- nothing. A network stored with them before holds nothing that had any
-- effect: they are dropped, so its next update is not refused for them.
-- Its version stays: no setting that mattered changed.
UPDATE networks
SET spec = spec - 'assignPublicIp' #- '{dns,privateZoneId}' #- '{dns,publicZoneId}'
WHERE spec->>'provider' <> 'aws'
  AND (spec ? 'assignPublicIp' OR spec->'dns' ? 'privateZoneId' OR spec->'dns' ? 'publicZoneId');

-- +goose Down
SELECT 1;
