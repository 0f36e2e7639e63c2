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

// Keys of the encryption contexts data keys are wrapped with.
const (
	contextInstanceID   = "flotilla:instance-id"
	contextSecretName   = "flotilla:secret-name"
	contextCloudAccount = "flotilla:cloud-account-id"
	contextCertKey      = "flotilla:certificate-key-id"
	contextACMEAccount  = "flotilla:acme-account-network-id"
	contextACMECert     = "flotilla:acme-certificate-instance-id"
)

// binding is what a sealed value is bound to: its ciphertext to aad, its
// wrapped data key to ec (the KMS encryption context). A value moved to
// another row fails to open.
type binding struct {
	aad []byte
	ec  kms.EncryptionContext
}

// dataKeyContext is the encryption context of a secret's data key: its
// instance id and name, so a wrapped key moved to another secret does not
// unwrap (the version is left out: it is bound to the ciphertext, and a
// rewrap must not depend on it).
func dataKeyContext(instanceID, name string) kms.EncryptionContext {
	return kms.EncryptionContext{contextInstanceID: instanceID, contextSecretName: name}
}

// secretBinding binds version of secret name of instanceID: the ciphertext
// to all three (secretAAD), the data key to the first two.
func secretBinding(instanceID, name string, version int64) binding {
	return binding{aad: secretAAD(instanceID, name, version), ec: dataKeyContext(instanceID, name)}
}

// cloudKeyContext is the encryption context of a cloud account's key.
func cloudKeyContext(accountID string) kms.EncryptionContext {
	return kms.EncryptionContext{contextCloudAccount: accountID}
}

// certKeyContext is the encryption context of a stored TLS key.
func certKeyContext(id string) kms.EncryptionContext {
	return kms.EncryptionContext{contextCertKey: id}
}

// acmeAccountContext is the encryption context of a network's ACME
// account key.
func acmeAccountContext(networkID string) kms.EncryptionContext {
	return kms.EncryptionContext{contextACMEAccount: networkID}
}

// acmeCertContext is the encryption context of the key of an instance's
// ACME certificate.
func acmeCertContext(instanceID string) kms.EncryptionContext {
	return kms.EncryptionContext{contextACMECert: instanceID}
}

// seal encrypts value under a fresh data key from k, bound as b says. The
// data key is zeroed before seal returns; value stays the caller's.
func seal(ctx context.Context, k kms.KMS, value []byte, b binding) (sealed, error) {
	dataKey, wrapped, err := k.GenerateDataKey(ctx, dataKeySize, b.ec)
	if err != nil {
		return sealed{}, fmt.Errorf("generate a data key with %s: %w", k.KeyID(), err)
	}
	defer clear(dataKey)
	aead, err := newGCM(dataKey)
	if err != nil {
		return sealed{}, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return sealed{}, fmt.Errorf("generate nonce: %w", err)
	}
	return sealed{
		ciphertext: aead.Seal(nil, nonce, value, b.aad),
		nonce:      nonce,
		wrappedKey: wrapped,
		kmsKeyID:   k.KeyID(),
	}, nil
}

// open unwraps the data key with k and decrypts s, bound as b says. The
// caller owns (and should zero) the value returned. Errors wrap errOpen
// and name no part of the value or key.
func open(ctx context.Context, k kms.KMS, s sealed, b binding) ([]byte, error) {
	dataKey, err := k.Decrypt(ctx, s.kmsKeyID, s.wrappedKey, b.ec)
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
	value, err := aead.Open(nil, s.nonce, s.ciphertext, b.aad)
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
