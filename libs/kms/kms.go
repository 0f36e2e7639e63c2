// Package kms wraps and unwraps data keys under a master key that never leaves
// its key management system: the envelope-encryption half that Flotilla's
// secret broker does not do itself.
//
// A caller encrypts each value under a fresh random data key (from
// GenerateDataKey, or one of its own wrapped with Encrypt), and stores only
// the wrapped form of the key next to the ciphertext, together with the KeyID
// that wrapped it. To read the value back it asks the KMS to unwrap the data
// key, naming the key id it stored. An implementation reports a data key wrapped by another master key
// as ErrWrongKey and a wrapped key that fails authentication as ErrTampered,
// so a misconfigured or altered store is an error, never garbage.
//
// Every data key is wrapped with an EncryptionContext (the secret broker
// gives the instance id and the secret's name): unwrapping needs the same
// context, so a wrapped key moved to another secret fails as ErrTampered.
//
// Local keeps the master key in a file on the manager (embedded mode, small
// installs); AWS keeps it in AWS KMS, which never hands it out. Keyring
// wraps with one of them and unwraps with any it holds, so a store can move
// from one master key to another while it is in use (see the secret
// broker's Rewrap).
package kms

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// KMS wraps data keys under one master key and unwraps them again.
//
// Implementations must be safe for concurrent use and must never log or put
// into errors the data keys they are handed or return.
type KMS interface {
	// KeyID names the master key that Encrypt wraps under, e.g.
	// "local:1a2b3c4d5e6f7a8b" or an AWS key ARN. Store it with the wrapped key
	// and pass it back to Decrypt.
	KeyID() string
	// GenerateDataKey returns a fresh random data key of size bytes (1 to
	// MaxDataKeySize) and the same key wrapped under the master key with ec.
	// The caller owns dataKey and should zero it when done.
	GenerateDataKey(ctx context.Context, size int, ec EncryptionContext) (dataKey, wrapped []byte, err error)
	// Encrypt wraps a plaintext data key under the master key, binding ec to
	// it. The caller keeps ownership of dataKey (and should zero it when
	// done).
	Encrypt(ctx context.Context, dataKey []byte, ec EncryptionContext) (wrapped []byte, err error)
	// Decrypt unwraps a data key that Encrypt or GenerateDataKey wrapped
	// under the master key named keyID with the same ec. It returns an error
	// wrapping ErrWrongKey when keyID is not a key this KMS holds, and one
	// wrapping ErrTampered when wrapped does not authenticate with ec. The
	// caller owns the returned key and should zero it.
	Decrypt(ctx context.Context, keyID string, wrapped []byte, ec EncryptionContext) (dataKey []byte, err error)
}

// EncryptionContext is authenticated with a wrapped data key, never secret
// and never stored in it: what the key belongs to (the secret broker gives
// the instance id and the secret's name). AWS KMS records it in CloudTrail,
// so it must hold no secret.
type EncryptionContext map[string]string

// encode is ec in one unambiguous byte form: its pairs sorted by key, each
// string preceded by its length.
func (ec EncryptionContext) encode() []byte {
	keys := slices.Sorted(maps.Keys(ec))
	var out []byte
	for _, k := range keys {
		out = binary.AppendUvarint(out, uint64(len(k)))
		out = append(out, k...)
		out = binary.AppendUvarint(out, uint64(len(ec[k])))
		out = append(out, ec[k]...)
	}
	return out
}

// ErrWrongKey reports a data key wrapped by a master key other than the one
// this KMS holds: the wrong key file, or a store written by another
// installation.
var ErrWrongKey = errors.New("kms: data key was wrapped by a different master key")

// ErrTampered reports a wrapped data key that fails authentication: it was
// altered, truncated or corrupted after it was wrapped.
var ErrTampered = errors.New("kms: wrapped data key failed authentication (altered or corrupted)")

// MaxDataKeySize is the largest data key Encrypt accepts, in bytes; it
// matches AWS KMS's limit on Encrypt's plaintext.
const MaxDataKeySize = 4096

// checkDataKeySize refuses a data key size AWS KMS would refuse too.
func checkDataKeySize(n int) error {
	if n < 1 || n > MaxDataKeySize {
		return fmt.Errorf("kms: data key must be 1 to %d bytes, got %d", MaxDataKeySize, n)
	}
	return nil
}
