package ca

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// Join tokens.
const (
	// JoinTokensBucket is the JetStream key-value bucket of outstanding
	// join tokens: key = hex SHA-256 of the token, value = the token's
	// instance id and expiry (JSON). The token itself is never stored.
	// History 1, entries dropped after MaxJoinTokenTTL.
	JoinTokensBucket = subjects.JoinTokensBucket
	// JoinTokenPrefix starts every join token, so a leaked one is
	// recognisable (secret scanners, logs).
	JoinTokenPrefix = "fjt_"
	// DefaultJoinTokenTTL is how long a join token is valid when the
	// request does not say.
	DefaultJoinTokenTTL = time.Hour
	// MaxJoinTokenTTL is the longest a join token may be valid.
	MaxJoinTokenTTL = 24 * time.Hour
)

// joinTokenBytes is the entropy of a join token.
const joinTokenBytes = 32

// errBadToken is every join failure the caller's token is to blame for:
// unknown, expired and already used look the same.
var errBadToken = apierr.Unauthenticated("join token is invalid, expired or already used")

// joinTokens keeps join tokens in a KV bucket.
type joinTokens struct {
	kv jetstream.KeyValue
	js jetstream.JetStream
}

// tokenRecord is a stored join token.
type tokenRecord struct {
	InstanceID string    `json:"instanceId"`
	ExpireTime time.Time `json:"expireTime"`

	key      string // the bucket key, not stored
	revision uint64 // the revision read, not stored
}

// newJoinTokens declares the bucket, idempotently.
func newJoinTokens(ctx context.Context, js jetstream.JetStream, replicas int) (*joinTokens, error) {
	kv, err := bus.DeclareKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:       JoinTokensBucket,
		Description:  "Flotilla join tokens (SHA-256 digests), consumed once by agent.join",
		History:      1,
		TTL:          MaxJoinTokenTTL,
		MaxValueSize: 1024,
		Storage:      jetstream.FileStorage,
		Replicas:     replicas,
	})
	if err != nil {
		return nil, err
	}
	return &joinTokens{kv: kv, js: js}, nil
}

// create stores a new token for instanceID and returns it.
func (t *joinTokens) create(ctx context.Context, instanceID string, expire time.Time) (string, error) {
	b := make([]byte, joinTokenBytes)
	_, _ = rand.Read(b) // never fails
	token := JoinTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	val, err := json.Marshal(tokenRecord{InstanceID: instanceID, ExpireTime: expire.UTC()})
	if err != nil {
		return "", fmt.Errorf("encode join token: %w", err)
	}
	if _, err := t.kv.Create(ctx, tokenKey(token), val); err != nil {
		return "", fmt.Errorf("store join token for %s: %w", instanceID, err)
	}
	return token, nil
}

// lookup returns the stored record of token, or errBadToken.
func (t *joinTokens) lookup(ctx context.Context, token string) (*tokenRecord, error) {
	if !wellFormed(token) {
		return nil, errBadToken
	}
	key := tokenKey(token)
	// From the leader: a token minted a moment ago is there.
	val, rev, err := bus.GetLatest(ctx, t.js, JoinTokensBucket, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, errBadToken
	}
	if err != nil {
		return nil, fmt.Errorf("look up join token: %w", err)
	}
	var rec tokenRecord
	if err := json.Unmarshal(val, &rec); err != nil {
		return nil, fmt.Errorf("decode join token %s: %w", key, err)
	}
	rec.key, rec.revision = key, rev
	return &rec, nil
}

// consume deletes the token if it is still the revision lookup read: of
// several concurrent consumers exactly one succeeds; the others get
// errBadToken.
func (t *joinTokens) consume(ctx context.Context, rec *tokenRecord) error {
	err := t.kv.Delete(ctx, rec.key, jetstream.LastRevision(rec.revision))
	if isRevisionConflict(err) {
		return errBadToken
	}
	if err != nil {
		return fmt.Errorf("consume join token: %w", err)
	}
	return nil
}

// isRevisionConflict reports whether err is JetStream refusing a write
// because the key is no longer at the expected revision.
func isRevisionConflict(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// tokenKey is the bucket key of token: its SHA-256, hex.
func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// tokenID names a token in logs and audit records without revealing it:
// the first 16 hex digits of its SHA-256 (as bearer tokens are named).
func tokenID(token string) string { return tokenKey(token)[:16] }

// wellFormed reports whether token looks like one create made.
func wellFormed(token string) bool {
	body, ok := strings.CutPrefix(token, JoinTokenPrefix)
	if !ok || len(body) != base64.RawURLEncoding.EncodedLen(joinTokenBytes) {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(body)
	return err == nil
}
