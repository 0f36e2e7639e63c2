// Package secrets is the secret broker: it stores values bound to instances,
// encrypted, and releases each one only to the agent of the instance it is
// bound to, with an audit record for every read.
//
// Values are envelope-encrypted. Every secret (every version of it) gets a
// fresh random 256-bit data key; the value is sealed with AES-256-GCM under
// that key, with the instance id, name and version as additional
// authenticated data, so a ciphertext cannot be moved to another secret or
// replayed as another version. The data key is stored only wrapped by a
// libs/kms key (a local master key file, or an AWS KMS key), with the
// instance id and name as its encryption context, together with that key's
// id, so a wrong master key is reported as such. Rewrap moves every data
// key to the key now configured (flotilla admin rewrap-secrets).
//
// State lives in the broker's own PostgreSQL table, secrets, created by its
// own embedded goose migrations recorded in their own version table
// (SchemaVersionTable), so it can share a database with the inventory. No
// plaintext is ever written to it.
//
// The broker answers on the bus (subjects.Endpoint(subjects.Secrets,
// subjects.NounSecret, verb)): create, list and delete for operators through
// the gateway, which never see a value come back, and read for the agent
// gateway, which names the requesting instance from the agent's verified
// certificate. A read is allowed only for a secret bound to the requesting
// instance; a name bound only to other instances and a name that does not
// exist get the same permission-denied reply, so an agent cannot probe what
// other instances hold. Every read, allowed or denied, is published to the
// audit stream (subjects.Audit("secret", requester, "read")) and acknowledged
// by JetStream before the value is returned: if the audit record cannot be
// written, the read fails.
//
// The value never appears in logs, errors, trace attributes, audit records or
// any reply but read's. Buffers the broker owns that held a value or a data
// key are zeroed after use; the request's own copy (a protobuf string) and
// the marshalled reply belong to the runtime and are left to the garbage
// collector.
package secrets
