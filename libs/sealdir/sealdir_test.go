package sealdir

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// tree makes a directory of files (path → content) under t's temporary
// directory, each of mode 0600 but "public", 0644.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o600)
		if strings.HasSuffix(name, "public") {
			mode = 0o644
		}
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// newKey makes a key in t's temporary directory: its identity file and
// public key.
func newKey(t *testing.T) (file, recipient string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "backup.key")
	recipient, err := NewKey(file)
	if err != nil {
		t.Fatal(err)
	}
	return file, recipient
}

func seal(t *testing.T, dir string, recipients ...string) []byte {
	t.Helper()
	rs, err := Recipients(recipients, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(recipients) || fmt.Sprint(rs[0]) != recipients[0] {
		t.Fatalf("Recipients: %d keys, the first %s, want %s", len(rs), Abbrev(fmt.Sprint(rs[0])), Abbrev(recipients...))
	}
	var buf bytes.Buffer
	if err := Seal(&buf, dir, rs...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func open(t *testing.T, sealed []byte, keyFiles ...string) (string, error) {
	t.Helper()
	ids, err := Identities(keyFiles)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return dir, Open(bytes.NewReader(sealed), dir, ids...)
}

// TestASealedTreeOpensWithAnyOfItsKeysAlone: what Seal writes holds no
// byte of the files in the clear; either key it was sealed to opens it
// into the same tree (contents and permission bits), and another key
// does not.
func TestASealedTreeOpensWithAnyOfItsKeysAlone(t *testing.T) {
	t.Parallel()
	secret := strings.Repeat("the master key ", 100)
	src := tree(t, map[string]string{"keys/master.key": secret, "config/settings.public": "{}", "streams/empty": ""})
	if err := os.Mkdir(filepath.Join(src, "an-empty-dir"), 0o750); err != nil {
		t.Fatal(err)
	}
	key1, r1 := newKey(t)
	key2, r2 := newKey(t)
	if !strings.HasPrefix(r1, "age1pq1") {
		t.Errorf("NewKey's public key %s: want a post-quantum one, age1pq1…", Abbrev(r1))
	}
	sealed := seal(t, src, r1, r2)
	if bytes.Contains(sealed, []byte("master key")) || bytes.Contains(sealed, []byte("master.key")) {
		t.Fatal("the sealed stream holds a file's content or name in the clear")
	}

	for _, key := range []string{key1, key2} {
		dir, err := open(t, sealed, key)
		if err != nil {
			t.Fatalf("open with %s: %v", key, err)
		}
		for name, want := range map[string]os.FileMode{"keys/master.key": 0o600, "config/settings.public": 0o644, "streams/empty": 0o600, "an-empty-dir": 0o750 | os.ModeDir} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || fi.Mode() != want {
				t.Errorf("opened %s: %v %v, want mode %v", name, fi.Mode(), err, want)
			}
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "keys", "master.key")); string(b) != secret {
			t.Errorf("opened keys/master.key: %d bytes, not what was sealed", len(b))
		}
	}

	if n, err := Stanzas(bytes.NewReader(sealed)); err != nil || n != 2 {
		t.Errorf("Stanzas: %d %v, want the two keys it is sealed to", n, err)
	}
	if _, err := Stanzas(strings.NewReader("not sealed")); err == nil {
		t.Error("Stanzas of something else: no error")
	}
	other, _ := newKey(t)
	if _, err := open(t, sealed, other); !errors.Is(err, ErrNoKey) {
		t.Errorf("open with a key it was not sealed to: %v, want ErrNoKey", err)
	}
}

// TestASealedStreamAlteredOrCutShortDoesNotOpen: a byte changed or the
// stream's end cut off is an error, never a tree taken as whole.
func TestASealedStreamAlteredOrCutShortDoesNotOpen(t *testing.T) {
	t.Parallel()
	src := tree(t, map[string]string{"a": strings.Repeat("x", 200_000), "b": "y"})
	key, r := newKey(t)
	sealed := seal(t, src, r)

	altered := bytes.Clone(sealed)
	altered[len(altered)/2] ^= 1
	if _, err := open(t, altered, key); err == nil {
		t.Error("an altered stream opened")
	}
	for _, cut := range []int{len(sealed) - 1, len(sealed) - 20, len(sealed) / 2} {
		if _, err := open(t, sealed[:cut], key); err == nil {
			t.Errorf("the stream cut at %d of %d bytes opened", cut, len(sealed))
		}
	}
	if _, err := open(t, sealed, key); err != nil {
		t.Fatalf("the whole stream: %v", err)
	}
}

// TestOpenRefusesWhatLeadsOutOfItsDirectory: a stream sealed by someone
// else, naming a path out of the directory or a link, unpacks nothing
// there.
func TestOpenRefusesWhatLeadsOutOfItsDirectory(t *testing.T) {
	t.Parallel()
	key, r := newKey(t)
	rs, err := Recipients([]string{r}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*tar.Header{
		{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1},
		{Name: "/etc/escaped", Typeflag: tar.TypeReg, Mode: 0o600, Size: 1},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
	} {
		var buf bytes.Buffer
		aw, _ := age.Encrypt(&buf, rs...)
		zw, _ := zstd.NewWriter(aw)
		tw := tar.NewWriter(zw)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("x"))
		}
		if err := errors.Join(tw.Close(), zw.Close(), aw.Close()); err != nil {
			t.Fatal(err)
		}
		dir, err := open(t, buf.Bytes(), key)
		if err == nil || !strings.Contains(err.Error(), h.Name) {
			t.Errorf("an entry %q: %v, want an error naming it", h.Name, err)
		}
		if _, err := os.Lstat(filepath.Join(filepath.Dir(dir), "escaped")); err == nil {
			t.Errorf("an entry %q was written out of the directory", h.Name)
		}
	}
}

// TestKeysAreCheckedForWhatTheyAre: a secret key given where a public one
// is wanted is refused (it must not be written beside the backups), as
// is a file that holds no key; NewKey refuses to overwrite a key.
func TestKeysAreCheckedForWhatTheyAre(t *testing.T) {
	t.Parallel()
	key, r := newKey(t)
	secret, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Recipients(nil, []string{key}); err == nil || !strings.Contains(err.Error(), "holds a secret key") {
		t.Errorf("an identity file as a recipients file: %v", err)
	}
	line := strings.TrimSpace(string(secret[bytes.LastIndexByte(secret[:len(secret)-1], '\n')+1:]))
	if _, err := Recipients([]string{line}, nil); err == nil || !strings.Contains(err.Error(), "that is a secret key") || strings.Contains(err.Error(), line) {
		t.Errorf("a secret key as --recipient: %v (it must not be echoed)", err)
	}
	if _, err := Recipients([]string{"age1nonsense"}, nil); err == nil || !strings.Contains(err.Error(), "--recipient age1nonsense") {
		t.Errorf("a malformed --recipient: %v", err)
	}
	recipients := filepath.Join(t.TempDir(), "recipients")
	if err := os.WriteFile(recipients, []byte("# the off-site key\n"+r+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rs, err := Recipients(nil, []string{recipients}); err != nil || len(rs) != 1 || fmt.Sprint(rs[0]) != r {
		t.Errorf("a recipients file: %d %v", len(rs), err)
	}
	if _, err := Identities([]string{recipients}); err == nil {
		t.Error("a recipients file read as an identity file")
	}
	if _, err := NewKey(key); !errors.Is(err, os.ErrExist) {
		t.Errorf("NewKey over a key: %v", err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the key file's mode: %v %v", fi.Mode(), err)
	}
}
