// Package kms wraps and unwraps data keys under a master key that never leaves
// its key management system: the envelope-encryption half that Flotilla's
// secret broker does not do itself.
//
// A caller encrypts each value under a fresh random data key of its own, asks
// the KMS to wrap (encrypt) that data key, and stores only the wrapped form
// next to the ciphertext together with the KeyID that wrapped it. To read the
// value back it asks the KMS to unwrap the data key, naming the key id it
// stored. An implementation reports a data key wrapped by another master key
// as ErrWrongKey and a wrapped key that fails authentication as ErrTampered,
// so a misconfigured or altered store is an error, never garbage.
//
// Local keeps the master key in a file on the manager (embedded mode, small
// installs); an AWS KMS implementation will follow for cloud accounts.
package kms

import (
	"context"
	"errors"
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
	// Encrypt wraps a plaintext data key under the master key. The caller
	// keeps ownership of dataKey (and should zero it when done).
	Encrypt(ctx context.Context, dataKey []byte) (wrapped []byte, err error)
	// Decrypt unwraps a data key that Encrypt wrapped under the master key
	// named keyID. It returns an error wrapping ErrWrongKey when keyID is not
	// a key this KMS holds, and one wrapping ErrTampered when wrapped does not
	// authenticate. The caller owns the returned key and should zero it.
	Decrypt(ctx context.Context, keyID string, wrapped []byte) (dataKey []byte, err error)
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
