package kms

import (
	"context"
	"fmt"
	"strings"
)

// Keyring is a KMS that wraps under its current master key and unwraps
// under the current one or any previous one, chosen by the key id stored
// with the wrapped key. It lets a store move to a new master key without
// downtime: configure the new key as current and keep the old one as
// previous until every data key is rewrapped, then drop it.
type Keyring struct {
	current  KMS
	previous []KMS
}

// NewKeyring builds a Keyring that wraps with current and also unwraps
// what previous keys wrapped. A previous key with current's id is left out.
func NewKeyring(current KMS, previous ...KMS) *Keyring {
	r := &Keyring{current: current}
	for _, p := range previous {
		if p != nil && p.KeyID() != current.KeyID() {
			r.previous = append(r.previous, p)
		}
	}
	return r
}

// KeyID is the current master key's id.
func (r *Keyring) KeyID() string { return r.current.KeyID() }

// KeyIDs lists the ids of every master key the keyring unwraps with, the
// current one first.
func (r *Keyring) KeyIDs() []string {
	ids := []string{r.current.KeyID()}
	for _, p := range r.previous {
		ids = append(ids, p.KeyID())
	}
	return ids
}

// GenerateDataKey generates a data key wrapped under the current master key.
func (r *Keyring) GenerateDataKey(ctx context.Context, size int, ec EncryptionContext) ([]byte, []byte, error) {
	return r.current.GenerateDataKey(ctx, size, ec)
}

// Encrypt wraps dataKey under the current master key.
func (r *Keyring) Encrypt(ctx context.Context, dataKey []byte, ec EncryptionContext) ([]byte, error) {
	return r.current.Encrypt(ctx, dataKey, ec)
}

// Decrypt unwraps with the master key named keyID, current or previous; a
// key id it does not hold is ErrWrongKey.
func (r *Keyring) Decrypt(ctx context.Context, keyID string, wrapped []byte, ec EncryptionContext) ([]byte, error) {
	if keyID == r.current.KeyID() {
		return r.current.Decrypt(ctx, keyID, wrapped, ec)
	}
	for _, p := range r.previous {
		if keyID == p.KeyID() {
			return p.Decrypt(ctx, keyID, wrapped, ec)
		}
	}
	return nil, fmt.Errorf("%w: it names key %q, and this manager holds %s", ErrWrongKey, keyID, strings.Join(r.KeyIDs(), ", "))
}
