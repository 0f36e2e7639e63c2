package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// KeySize is the size of a local master key in bytes: an AES-256 key.
const KeySize = 32

// The first byte of every key Local wraps names its format, so the format
// can change without guessing.
const (
	// localFormatV1 authenticates the key id only. Local wrote it before
	// data keys had an encryption context; Decrypt still opens it (the
	// context then goes unchecked) until the store is rewrapped.
	localFormatV1 byte = 1
	// localFormat authenticates the key id and the encryption context.
	localFormat byte = 2
)

// keyIDPrefix starts every Local key id.
const keyIDPrefix = "local:"

// Local is a KMS whose master key is KeySize random bytes in a file on the
// manager. It wraps data keys with AES-256-GCM under a random 96-bit nonce,
// authenticating its key id and the encryption context with them, and is
// safe for concurrent use.
//
// Anyone who can read the file can unwrap every data key: keep it on the
// manager's disk only, and back it up apart from the database, since secrets
// cannot be read back without it.
type Local struct {
	path  string
	keyID string
	aead  cipher.AEAD
}

// OpenLocal loads the master key in the file at path, first creating it with
// a fresh random key (mode 0600, in a directory created with mode 0700) when
// there is no such file. Several processes opening the same new path at once
// end up with the same key.
//
// It refuses, naming the file, a key file that group or others may access, a
// key file in a directory that group or others may write (they could replace
// the key), and a key file that does not hold exactly KeySize bytes.
//
// OpenLocal suits one manager (embedded mode). Where several managers must
// share one key, create it once and give each LoadLocal, so that a manager
// missing the file fails instead of starting with a key of its own.
func OpenLocal(path string) (*Local, error) {
	key, err := readKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err = createKeyFile(path); err == nil {
			key, err = readKeyFile(path)
		}
	}
	if err != nil {
		return nil, err
	}
	return newLocal(path, key)
}

// LoadLocal loads the master key in the existing file at path, with the
// checks of OpenLocal; it never creates one.
func LoadLocal(path string) (*Local, error) {
	key, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	return newLocal(path, key)
}

// newLocal builds a Local from key, which it zeroes.
func newLocal(path string, key []byte) (*Local, error) {
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("kms: master key file %s: %w", path, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("kms: master key file %s: %w", path, err)
	}
	return &Local{path: path, keyID: localKeyID(key), aead: aead}, nil
}

// localKeyID derives the public id of a master key: "local:" and the first 8
// bytes of a SHA-256 of the key, in hex. It identifies the key without
// revealing anything useful about it.
func localKeyID(key []byte) string {
	h := sha256.New()
	h.Write([]byte("flotilla kms local key id\x00"))
	h.Write(key)
	return keyIDPrefix + hex.EncodeToString(h.Sum(nil)[:8])
}

// KeyID returns "local:" and 16 hex digits derived from the master key.
func (l *Local) KeyID() string { return l.keyID }

// Path returns the master key file's path.
func (l *Local) Path() string { return l.path }

// GenerateDataKey returns a fresh random data key of size bytes and the
// same key wrapped under the master key with ec.
func (l *Local) GenerateDataKey(ctx context.Context, size int, ec EncryptionContext) ([]byte, []byte, error) {
	if err := checkDataKeySize(size); err != nil {
		return nil, nil, err
	}
	dataKey := make([]byte, size)
	if _, err := rand.Read(dataKey); err != nil {
		return nil, nil, fmt.Errorf("kms: generate data key: %w", err)
	}
	wrapped, err := l.Encrypt(ctx, dataKey, ec)
	if err != nil {
		clear(dataKey)
		return nil, nil, err
	}
	return dataKey, wrapped, nil
}

// Encrypt wraps dataKey (1 to MaxDataKeySize bytes) under the master key,
// binding ec to it.
func (l *Local) Encrypt(_ context.Context, dataKey []byte, ec EncryptionContext) ([]byte, error) {
	if err := checkDataKeySize(len(dataKey)); err != nil {
		return nil, err
	}
	ns := l.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(dataKey)+l.aead.Overhead())
	out[0] = localFormat
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("kms: nonce: %w", err)
	}
	return l.aead.Seal(out, out[1:], dataKey, l.aad(localFormat, ec)), nil
}

// Decrypt unwraps a data key that Encrypt wrapped under the master key named
// keyID with ec. A key wrapped in the first format (before encryption
// contexts) opens whatever ec is.
func (l *Local) Decrypt(_ context.Context, keyID string, wrapped []byte, ec EncryptionContext) ([]byte, error) {
	if keyID != l.keyID {
		return nil, fmt.Errorf("%w: it names key %q but the master key in %s is %q", ErrWrongKey, keyID, l.path, l.keyID)
	}
	ns := l.aead.NonceSize()
	if len(wrapped) < 1+ns+l.aead.Overhead() || (wrapped[0] != localFormat && wrapped[0] != localFormatV1) {
		return nil, fmt.Errorf("%w: not a wrapped key of format %d or %d", ErrTampered, localFormatV1, localFormat)
	}
	key, err := l.aead.Open(nil, wrapped[1:1+ns], wrapped[1+ns:], l.aad(wrapped[0], ec))
	if err != nil {
		return nil, ErrTampered
	}
	return key, nil
}

// aad is what a wrapped key of format authenticates besides itself: the key
// id, and from localFormat on the encryption context after a NUL (key ids
// hold none).
func (l *Local) aad(format byte, ec EncryptionContext) []byte {
	if format == localFormatV1 {
		return []byte(l.keyID)
	}
	return append(append([]byte(l.keyID), 0), ec.encode()...)
}

// readKeyFile checks the key file's permissions and size and returns the key.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kms: open master key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kms: master key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("kms: master key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("kms: master key file %s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("kms: master key directory: %w", err)
	}
	if perm := di.Mode().Perm(); perm&0o022 != 0 {
		return nil, fmt.Errorf("kms: master key file %s is in directory %s of mode %04o: group and others must not be able to write it (chmod go-w %s)", path, dir, perm, dir)
	}
	key := make([]byte, KeySize+1)
	n, err := io.ReadFull(f, key)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		clear(key)
		return nil, fmt.Errorf("kms: read master key file: %w", err)
	}
	if n != KeySize {
		clear(key)
		return nil, fmt.Errorf("kms: master key file %s is %d bytes, want exactly %d", path, fi.Size(), KeySize)
	}
	return key[:KeySize], nil
}

// createKeyFile writes a fresh key to a temporary file and links it into
// place, so no reader ever sees a partial key and a concurrent creator's key
// is never overwritten.
func createKeyFile(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("kms: create master key directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".master-key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("kms: create master key file: %w", err)
	}
	defer func() {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
	}()
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("kms: generate master key: %w", err)
	}
	if _, err := tmp.Write(key); err != nil {
		return fmt.Errorf("kms: write master key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("kms: write master key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("kms: create master key file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the new name durable
		_ = d.Close()
	}
	return nil
}
