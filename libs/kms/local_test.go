package kms_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"flotilla.dev/flotilla/libs/kms"
)

func openNew(t *testing.T) (*kms.Local, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys", "master.key")
	l, err := kms.OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	return l, path
}

func TestLocalRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, path := openNew(t)
	if !regexp.MustCompile(`^local:[0-9a-f]{16}$`).MatchString(l.KeyID()) {
		t.Fatalf("key id %q does not look like local:<16 hex digits>", l.KeyID())
	}
	dataKey := bytes.Repeat([]byte{0x42}, 32)
	w1, err := l.Encrypt(ctx, dataKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := l.Encrypt(ctx, dataKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(w1, w2) {
		t.Fatal("wrapping the same key twice gave the same bytes: the nonce is not random")
	}
	if bytes.Contains(w1, dataKey[:8]) {
		t.Fatal("wrapped key contains the plaintext key")
	}
	got, err := l.Decrypt(ctx, l.KeyID(), w1, nil)
	if err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("decrypt: %x, %v", got, err)
	}

	// The same file opened again is the same key.
	again, err := kms.OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != l.KeyID() {
		t.Fatalf("reopened key id %s, want %s", again.KeyID(), l.KeyID())
	}
	if got, err := again.Decrypt(ctx, l.KeyID(), w2, nil); err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("decrypt with the reopened key: %x, %v", got, err)
	}

	for _, bad := range [][]byte{nil, make([]byte, kms.MaxDataKeySize+1)} {
		if _, err := l.Encrypt(ctx, bad, nil); err == nil {
			t.Fatalf("Encrypt accepted a %d-byte data key", len(bad))
		}
	}
}

func TestLocalDetectsTampering(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := openNew(t)
	w, err := l.Encrypt(ctx, make([]byte, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range w {
		bad := bytes.Clone(w)
		bad[i] ^= 0x01
		if _, err := l.Decrypt(ctx, l.KeyID(), bad, nil); !errors.Is(err, kms.ErrTampered) {
			t.Fatalf("flipping a bit of byte %d: got %v, want ErrTampered", i, err)
		}
	}
	for _, bad := range [][]byte{nil, w[:10], w[:len(w)-1]} {
		if _, err := l.Decrypt(ctx, l.KeyID(), bad, nil); !errors.Is(err, kms.ErrTampered) {
			t.Fatalf("a %d-byte wrapped key: got %v, want ErrTampered", len(bad), err)
		}
	}
}

func TestLocalDetectsTheWrongMasterKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, _ := openNew(t)
	b, pathB := openNew(t)
	if a.KeyID() == b.KeyID() {
		t.Fatal("two fresh master keys have the same id")
	}
	w, err := a.Encrypt(ctx, make([]byte, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Decrypting with b a key wrapped by a: the stored key id gives it away.
	_, err = b.Decrypt(ctx, a.KeyID(), w, nil)
	if !errors.Is(err, kms.ErrWrongKey) {
		t.Fatalf("got %v, want ErrWrongKey", err)
	}
	for _, want := range []string{a.KeyID(), b.KeyID(), pathB} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	// Even if the stored id were rewritten to match, the key id is bound to
	// the wrapped key, so b cannot be fooled into returning garbage.
	if _, err := b.Decrypt(ctx, b.KeyID(), w, nil); !errors.Is(err, kms.ErrTampered) {
		t.Fatalf("a's wrapped key under b's id: got %v, want ErrTampered", err)
	}
}

func TestLocalCreatesAPrivateKeyFile(t *testing.T) {
	t.Parallel()
	_, path := openNew(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != kms.KeySize {
		t.Fatalf("key file mode %04o size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), kms.KeySize)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("key directory mode %04o, want 0700", di.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("key directory holds %d entries, want only the key file", len(entries))
	}
}

func TestLoadLocalNeverCreates(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "master.key")
	if _, err := kms.LoadLocal(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadLocal of a missing file: %v, want not exist", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("LoadLocal created the key file")
	}
	created, err := kms.OpenLocal(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := kms.LoadLocal(path)
	if err != nil || loaded.KeyID() != created.KeyID() {
		t.Fatalf("LoadLocal of the created file: %v, %v", loaded, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := kms.LoadLocal(path); err == nil || !strings.Contains(err.Error(), "has mode 0644") {
		t.Fatalf("LoadLocal of a readable key file: %v", err)
	}
}

func TestLocalConcurrentCreatorsAgree(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "k", "master.key")
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			l, err := kms.OpenLocal(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = l.KeyID()
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent opens of a new key file got different keys: %v", ids)
		}
	}
}

func TestLocalRefusesAnUnsafeKeyFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// prepare makes a bad key file at path, in a 0700 directory.
		prepare func(t *testing.T, path string)
		want    string
	}{{
		name: "readable by group",
		prepare: func(t *testing.T, path string) {
			writeFile(t, path, make([]byte, kms.KeySize), 0o640)
		},
		want: "has mode 0640",
	}, {
		name: "readable by others",
		prepare: func(t *testing.T, path string) {
			writeFile(t, path, make([]byte, kms.KeySize), 0o604)
		},
		want: "has mode 0604",
	}, {
		name: "too short",
		prepare: func(t *testing.T, path string) {
			writeFile(t, path, make([]byte, 16), 0o600)
		},
		want: "is 16 bytes, want exactly 32",
	}, {
		name: "too long",
		prepare: func(t *testing.T, path string) {
			writeFile(t, path, make([]byte, 33), 0o600)
		},
		want: "is 33 bytes, want exactly 32",
	}, {
		name: "empty",
		prepare: func(t *testing.T, path string) {
			writeFile(t, path, nil, 0o600)
		},
		want: "is 0 bytes",
	}, {
		name: "directory writable by others",
		prepare: func(t *testing.T, path string) {
			writeFile(t, path, make([]byte, kms.KeySize), 0o600)
			if err := os.Chmod(filepath.Dir(path), 0o777); err != nil {
				t.Fatal(err)
			}
		},
		want: "mode 0777",
	}, {
		name: "a directory",
		prepare: func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		},
		want: "not a regular file",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "keys")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "master.key")
			tc.prepare(t, path)
			_, err := kms.OpenLocal(path)
			if err == nil {
				t.Fatal("OpenLocal accepted the key file")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name the file %s and say %q", err, path, tc.want)
			}
		})
	}
}

// writeFile writes data to path with exactly mode perm (whatever the umask).
func writeFile(t *testing.T, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
}

func TestLocalBindsTheEncryptionContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, _ := openNew(t)
	ec := kms.EncryptionContext{"flotilla:instance-id": "i-1", "flotilla:secret-name": "db"}
	dataKey, w, err := l.GenerateDataKey(ctx, 32, ec)
	if err != nil {
		t.Fatal(err)
	}
	if len(dataKey) != 32 || bytes.Contains(w, dataKey[:8]) {
		t.Fatalf("GenerateDataKey gave a %d-byte key, or one readable in the wrapped form", len(dataKey))
	}
	if got, err := l.Decrypt(ctx, l.KeyID(), w, ec); err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("decrypt with the same context: %v", err)
	}
	for _, other := range []kms.EncryptionContext{
		nil,
		{"flotilla:instance-id": "i-2", "flotilla:secret-name": "db"},
		{"flotilla:instance-id": "i-1", "flotilla:secret-name": "db2"},
		{"flotilla:instance-id": "i-1"},
		{"flotilla:instance-id": "i-1", "flotilla:secret-name": "db", "x": ""},
		// Shifting a boundary between key and value must not collide.
		{"flotilla:instance-id": "i-1flotilla:secret-name", "": "db"},
	} {
		if _, err := l.Decrypt(ctx, l.KeyID(), w, other); !errors.Is(err, kms.ErrTampered) {
			t.Fatalf("decrypt with context %v: got %v, want ErrTampered", other, err)
		}
	}
}

// TestLocalOpensTheFirstFormat: keys wrapped before encryption contexts
// (format 1: only the key id authenticated) stay readable, whatever context
// the reader gives, until they are rewrapped.
func TestLocalOpensTheFirstFormat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, path := openNew(t)
	master, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	dataKey := bytes.Repeat([]byte{7}, 32)
	nonce := bytes.Repeat([]byte{9}, gcm.NonceSize())
	v1 := gcm.Seal(append([]byte{1}, nonce...), nonce, dataKey, []byte(l.KeyID()))
	got, err := l.Decrypt(ctx, l.KeyID(), v1, kms.EncryptionContext{"flotilla:instance-id": "i-1"})
	if err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("decrypt a format-1 wrapped key: %v", err)
	}
	v1[0] = 3
	if _, err := l.Decrypt(ctx, l.KeyID(), v1, nil); !errors.Is(err, kms.ErrTampered) {
		t.Fatalf("an unknown format: got %v, want ErrTampered", err)
	}
}
