package secrets

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"flotilla.dev/flotilla/libs/kms"
)

// dataKeySize is the size of each secret's data key: AES-256.
const dataKeySize = 32

// sealed is a secret value as stored: never the value itself.
type sealed struct {
	ciphertext []byte // AES-256-GCM of the value under the data key, tag included
	nonce      []byte // the GCM nonce, random per seal
	wrappedKey []byte // the data key, wrapped by the KMS
	kmsKeyID   string // the KMS key that wrapped it
}

// errOpen is what a caller learns when a stored secret cannot be opened;
// the cause (tampering, wrong master key) is wrapped for the log.
var errOpen = errors.New("stored secret cannot be decrypted")

// secretAAD is the additional authenticated data of a secret's ciphertext:
// its instance id (canonical UUID), name and version, so a ciphertext moved
// to another secret, or to another version of the same one, fails to open.
// Names cannot hold NUL, and the version is fixed-width, so the encoding is
// unambiguous.
func secretAAD(instanceID, name string, version int64) []byte {
	aad := make([]byte, 0, 32+len(instanceID)+len(name))
	aad = append(aad, "flotilla secret v1\x00"...)
	aad = append(aad, instanceID...)
	aad = append(aad, 0)
	aad = append(aad, name...)
	aad = append(aad, 0)
	return binary.BigEndian.AppendUint64(aad, uint64(version))
}

// seal encrypts value under a fresh random data key, bound to aad, and wraps
// the data key with k. The data key is zeroed before seal returns; value
// stays the caller's.
func seal(ctx context.Context, k kms.KMS, value, aad []byte) (sealed, error) {
	dataKey := make([]byte, dataKeySize)
	defer clear(dataKey)
	if _, err := rand.Read(dataKey); err != nil {
		return sealed{}, fmt.Errorf("generate data key: %w", err)
	}
	aead, err := newGCM(dataKey)
	if err != nil {
		return sealed{}, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return sealed{}, fmt.Errorf("generate nonce: %w", err)
	}
	wrapped, err := k.Encrypt(ctx, dataKey)
	if err != nil {
		return sealed{}, fmt.Errorf("wrap data key with %s: %w", k.KeyID(), err)
	}
	return sealed{
		ciphertext: aead.Seal(nil, nonce, value, aad),
		nonce:      nonce,
		wrappedKey: wrapped,
		kmsKeyID:   k.KeyID(),
	}, nil
}

// open unwraps the data key with k and decrypts s, checking aad. The caller
// owns (and should zero) the value returned. Errors wrap errOpen and name no
// part of the value or key.
func open(ctx context.Context, k kms.KMS, s sealed, aad []byte) ([]byte, error) {
	dataKey, err := k.Decrypt(ctx, s.kmsKeyID, s.wrappedKey)
	if err != nil {
		return nil, fmt.Errorf("%w: unwrap data key: %w", errOpen, err)
	}
	defer clear(dataKey)
	aead, err := newGCM(dataKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errOpen, err)
	}
	if len(s.nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("%w: nonce is %d bytes, want %d", errOpen, len(s.nonce), aead.NonceSize())
	}
	value, err := aead.Open(nil, s.nonce, s.ciphertext, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: ciphertext failed authentication (altered, moved from another secret, or corrupted)", errOpen)
	}
	return value, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	return cipher.NewGCM(block)
}
