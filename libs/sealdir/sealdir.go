// Package sealdir seals a directory tree into one stream that only the
// holder of a key can open: the tree packed as a tar, compressed with
// zstd and encrypted with age (age-encryption.org/v1) to one or more
// recipients' public keys. It is how a backup leaves its host without
// its secrets: whoever holds the sealed file and not a key reads nothing,
// and a file altered or cut short does not open.
package sealdir

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// Seal writes the tree under dir (directories and regular files, with
// their permission bits; anything else is an error naming it) to w,
// packed, compressed and encrypted to recipients (at least one).
func Seal(w io.Writer, dir string, recipients ...age.Recipient) error {
	if len(recipients) == 0 {
		return errors.New("seal: no recipient to seal to")
	}
	aw, err := age.Encrypt(w, recipients...)
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	zw, err := zstd.NewWriter(aw)
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: int64(info.Mode().Perm()), ModTime: info.ModTime(), Format: tar.FormatPAX}
		switch {
		case e.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			return tw.WriteHeader(h)
		case e.Type().IsRegular():
			h.Typeflag, h.Size = tar.TypeReg, info.Size()
			return writeFile(tw, h, path)
		default:
			return fmt.Errorf("%s: neither a file nor a directory (%v)", path, e.Type())
		}
	})
	if err != nil {
		return fmt.Errorf("seal %s: %w", dir, err)
	}
	if err := errors.Join(tw.Close(), zw.Close(), aw.Close()); err != nil {
		return fmt.Errorf("seal %s: %w", dir, err)
	}
	return nil
}

// writeFile adds the file at path, of h, to tw; a file that changed size
// meanwhile is an error.
func writeFile(tw *tar.Writer, h *tar.Header, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if n, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("%s: %w (%d of %d bytes)", path, err, n, h.Size)
	}
	return nil
}

// Stanzas reads the header of a stream Seal wrote, without a key, and
// returns how many keys it is sealed to: a stream that is not one is an
// error. What follows the header is read by Open alone.
func Stanzas(r io.Reader) (int, error) {
	h, err := age.ExtractHeader(r)
	if err != nil {
		return 0, fmt.Errorf("not a sealed stream: %w", err)
	}
	n := 0
	for _, line := range strings.Split(string(h), "\n") {
		if strings.HasPrefix(line, "-> ") {
			n++
		}
	}
	return n, nil
}

// ErrNoKey is the error Open returns when none of the identities given
// opens the stream: it was sealed to other keys.
var ErrNoKey = errors.New("none of the keys given opens it: it was sealed to another")

// Open unpacks into dir, which must exist and be empty, the tree Seal
// wrote to r, with one of identities. The stream is read to its end: a
// wrong key (ErrNoKey), a stream altered or cut short, an entry that is
// neither a file nor a directory or whose name leads out of dir are
// errors, and leave in dir what was unpacked before them (the caller
// removes it).
func Open(r io.Reader, dir string, identities ...age.Identity) error {
	if entries, err := os.ReadDir(dir); err != nil {
		return fmt.Errorf("open into %s: %w", dir, err)
	} else if len(entries) > 0 {
		return fmt.Errorf("open into %s: it is not empty", dir)
	}
	ar, err := age.Decrypt(r, identities...)
	var noMatch *age.NoIdentityMatchError
	switch {
	case errors.As(err, &noMatch):
		return ErrNoKey
	case err != nil:
		return fmt.Errorf("open: %w", err)
	}
	zr, err := zstd.NewReader(ar)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		if err := unpack(tr, h, dir); err != nil {
			return fmt.Errorf("open: %s: %w", h.Name, err)
		}
	}
	// After the archive's end the stream must end too, authenticated:
	// age tells a stream cut short from a whole one only at its end.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return fmt.Errorf("open: %w", err)
	}
	return nil
}

// unpack writes one entry of the archive under dir.
func unpack(tr *tar.Reader, h *tar.Header, dir string) error {
	name := strings.TrimSuffix(h.Name, "/")
	if !filepath.IsLocal(filepath.FromSlash(name)) {
		return errors.New("the name leads out of the directory")
	}
	path := filepath.Join(dir, filepath.FromSlash(name))
	perm := fs.FileMode(h.Mode).Perm()
	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.MkdirAll(path, 0o700); err != nil {
			return err
		}
		return os.Chmod(path, perm)
	case tar.TypeReg:
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		return errors.Join(err, f.Close())
	default:
		return fmt.Errorf("neither a file nor a directory (type %q)", h.Typeflag)
	}
}

// Recipients parses the public keys to seal to: each of values one key
// (age1…), each of files a recipients file (one key a line; blank lines
// and lines that begin with # are skipped). A key's text is
// fmt.Sprint(key): record it to say which keys a stream was sealed to.
func Recipients(values, files []string) ([]age.Recipient, error) {
	var (
		out  []age.Recipient
		errs []error
	)
	add := func(src string, text string) {
		rs, err := age.ParseRecipients(strings.NewReader(text))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src, err))
			return
		}
		out = append(out, rs...)
	}
	for _, v := range values {
		if strings.HasPrefix(v, "AGE-SECRET-KEY-") {
			errs = append(errs, errors.New("--recipient: that is a secret key: give its public key (age1…), which flotilla admin backup-key prints"))
			continue
		}
		add("--recipient "+Abbrev(v), v)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("--recipients-file: %w", err))
			continue
		}
		if bytes.Contains(b, []byte("AGE-SECRET-KEY-")) {
			errs = append(errs, fmt.Errorf("--recipients-file %s: it holds a secret key: a recipients file holds public keys (age1…) alone", f))
			continue
		}
		add("--recipients-file "+f, string(b))
	}
	return out, errors.Join(errs...)
}

// Identities reads the secret keys in files (identity files: one key a
// line, AGE-SECRET-KEY-…; blank lines and lines that begin with # are
// skipped).
func Identities(files []string) ([]age.Identity, error) {
	var out []age.Identity
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--identity: %w", err)
		}
		ids, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("--identity %s: %w", f, err)
		}
		out = append(out, ids...)
	}
	return out, nil
}

// NewKey writes a new key to file, which must not exist (mode 0600), as
// an identity file holding a post-quantum hybrid age key, and returns its
// public key (a recipient: age1pq1…), which the file names in a comment.
func NewKey(file string) (string, error) {
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		return "", err
	}
	recipient := id.Recipient().String()
	f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	_, err = fmt.Fprintf(f, "# A Flotilla backup key: it opens the backups sealed to its public key:\n# public key: %s\n%s\n", recipient, id)
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		_ = os.Remove(file)
		return "", err
	}
	return recipient, nil
}

// Abbrev lists public keys for a reader, each shortened to its first and
// last characters (a post-quantum key is nearly 2 000 characters long).
func Abbrev(keys ...string) string {
	out := make([]string, len(keys))
	for i, k := range keys {
		if len(k) > 24 {
			k = k[:14] + "…" + k[len(k)-6:]
		}
		out[i] = k
	}
	return strings.Join(out, ", ")
}
