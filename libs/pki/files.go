package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// File modes of what LoadOrCreate writes.
const (
	// KeyFileMode is the mode of a generated CA key file.
	KeyFileMode fs.FileMode = 0o600
	// CertFileMode is the mode of a generated CA certificate file.
	CertFileMode fs.FileMode = 0o644
	// DirMode is the mode of a directory LoadOrCreate creates.
	DirMode fs.FileMode = 0o700
)

// pendingWait is how long LoadOrCreate waits for the certificate file of a
// CA another process is creating (its key file exists, younger than this).
const pendingWait = 10 * time.Second

// pollInterval is how often LoadOrCreate looks for that certificate file.
const pollInterval = 50 * time.Millisecond

// errLostRace reports that another process linked its key file first.
var errLostRace = errors.New("another process created the CA key file first")

// Load reads an Authority from a PEM certificate file (the signing
// certificate first, then optionally its issuers) and a PEM private key file
// (PKCS#8, SEC 1 or PKCS#1, unencrypted). Every error names the file at
// fault.
func Load(certFile, keyFile string, now time.Time) (*Authority, error) {
	certPEM, err := readFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificate file %s: %w", certFile, err)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate file %s: %w", certFile, err)
	}
	if err := checkCA(certs[0], now); err != nil {
		return nil, fmt.Errorf("CA certificate file %s: %w", certFile, err)
	}
	keyPEM, err := readFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("CA key file %s: %w", keyFile, err)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key file %s: %w", keyFile, err)
	}
	a, err := NewAuthority(certs, key, now)
	if err != nil {
		return nil, fmt.Errorf("CA key file %s does not match CA certificate file %s: %w", keyFile, certFile, err)
	}
	return a, nil
}

// LoadOrCreate loads the Authority in certFile and keyFile, or, when neither
// exists, generates one (GenerateCA) and writes it there: the key with mode
// KeyFileMode, the certificate with CertFileMode, creating missing
// directories with DirMode. created reports whether this call generated it.
//
// Several processes may share the files. Each writes temporary files and
// hard-links them into place, key first, which fails if the name exists; a
// process that loses the race waits for the winner's certificate and loads
// the winner's pair. When only one of the files exists (and the key is not
// one being created right now) it fails, naming both files.
func LoadOrCreate(certFile, keyFile string, now time.Time) (a *Authority, created bool, err error) {
	return loadOrCreate(certFile, keyFile, now, func() (*Authority, error) { return GenerateCA(now) })
}

// loadOrCreate is LoadOrCreate with generate making the new CA.
func loadOrCreate(certFile, keyFile string, now time.Time, generate func() (*Authority, error)) (a *Authority, created bool, err error) {
	if certFile == "" || keyFile == "" {
		return nil, false, errors.New("CA certificate and key file paths are required")
	}
	if filepath.Clean(certFile) == filepath.Clean(keyFile) {
		return nil, false, fmt.Errorf("CA certificate and key must be separate files, both are %s", certFile)
	}
	deadline := time.Now().Add(pendingWait)
	for {
		certOK, err := exists(certFile)
		if err != nil {
			return nil, false, fmt.Errorf("CA certificate file %s: %w", certFile, err)
		}
		keyOK, err := exists(keyFile)
		if err != nil {
			return nil, false, fmt.Errorf("CA key file %s: %w", keyFile, err)
		}
		switch {
		case certOK && keyOK:
			a, err := Load(certFile, keyFile, now)
			return a, false, err
		case certOK:
			return nil, false, fmt.Errorf("CA certificate file %s exists but CA key file %s does not: supply the matching key, or remove the certificate to have a new CA generated", certFile, keyFile)
		case keyOK:
			if pending(keyFile) && time.Now().Before(deadline) {
				time.Sleep(pollInterval)
				continue
			}
			return nil, false, fmt.Errorf("CA key file %s exists but CA certificate file %s does not: supply the matching certificate, or remove the key to have a new CA generated", keyFile, certFile)
		}
		a, err := create(certFile, keyFile, generate)
		if errors.Is(err, errLostRace) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		return a, true, nil
	}
}

// create generates a CA and links its files into place; errLostRace if the
// key file appeared meanwhile.
func create(certFile, keyFile string, generate func() (*Authority, error)) (*Authority, error) {
	a, err := generate()
	if err != nil {
		return nil, err
	}
	keyPEM, err := EncodePrivateKeyPEM(a.signer)
	if err != nil {
		return nil, err
	}
	keyDir, certDir := filepath.Dir(keyFile), filepath.Dir(certFile)
	for _, d := range []string{keyDir, certDir} {
		if err := os.MkdirAll(d, DirMode); err != nil {
			return nil, fmt.Errorf("create CA directory: %w", err)
		}
	}
	keyTmp, err := writeTemp(keyDir, filepath.Base(keyFile), keyPEM, KeyFileMode)
	if err != nil {
		return nil, fmt.Errorf("CA key file %s: %w", keyFile, err)
	}
	defer os.Remove(keyTmp)
	certTmp, err := writeTemp(certDir, filepath.Base(certFile), a.bundle, CertFileMode)
	if err != nil {
		return nil, fmt.Errorf("CA certificate file %s: %w", certFile, err)
	}
	defer os.Remove(certTmp)

	if err := os.Link(keyTmp, keyFile); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, errLostRace
		}
		return nil, fmt.Errorf("CA key file %s: %w", keyFile, err)
	}
	if err := os.Link(certTmp, certFile); err != nil {
		// The key is ours (the link above succeeded): take it back, so
		// the next start does not find a key without a certificate.
		_ = os.Remove(keyFile)
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("CA certificate file %s appeared while a new CA was being created: supply the matching key at %s, or remove the certificate", certFile, keyFile)
		}
		return nil, fmt.Errorf("CA certificate file %s: %w", certFile, err)
	}
	for _, d := range []string{keyDir, certDir} {
		if err := syncDir(d); err != nil {
			return nil, fmt.Errorf("sync CA directory %s: %w", d, err)
		}
	}
	return a, nil
}

// writeTemp writes data to a new file next to base in dir with mode,
// flushed to disk, and returns its path.
func writeTemp(dir, base string, data []byte, mode fs.FileMode) (path string, err error) {
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return f.Name(), f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// exists reports whether path exists.
func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, unwrapPath(err)
	}
}

// pending reports whether keyFile was written so recently that the process
// that wrote it may still be linking the certificate next to it.
func pending(keyFile string) bool {
	fi, err := os.Stat(keyFile)
	return err == nil && time.Since(fi.ModTime()) < pendingWait
}

// readFile reads path; its errors leave the path to the caller.
func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, unwrapPath(err)
	}
	return b, nil
}

// unwrapPath drops the operation and path of a *fs.PathError, which the
// caller's message names already.
func unwrapPath(err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return pe.Err
	}
	return err
}
