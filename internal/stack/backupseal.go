package stack

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"filippo.io/age"

	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/sealdir"
)

// SealedFile is, in a sealed backup, the backup itself: packed, compressed
// and encrypted to the keys its manifest names (sealdir).
const SealedFile = "backup.tar.zst.age"

// BackupSeal describes a sealed backup (BackupManifest.Sealed).
type BackupSeal struct {
	File  string `json:"file"`
	Bytes int64  `json:"bytes"`
	// Recipients are the public keys it is sealed to: the secret key of
	// any one of them opens it.
	Recipients []string `json:"recipients"`
}

// SealBackup takes a backup with take, into a staging directory, and seals
// it into dest, a new directory (or an empty one, outside dataDir, the data
// directory backed up: "" for a cluster): SealedFile, the backup
// encrypted to recipients, and beside it the manifest in the clear, for
// listing and pruning backups without a key (it names what the backup
// holds, not a secret). The staging directory is in the system's temporary
// directory ($TMPDIR), where no other user can list it (PostgreSQL's
// system user passes through it to write the base backup); it needs room
// for the backup, and is removed whatever happens. On an error dest is
// left as it was found.
func SealBackup(dest string, dataDir datadir.Dir, recipients []age.Recipient, take func(stage string) (*BackupManifest, error)) (_ *BackupManifest, err error) {
	if len(recipients) == 0 {
		return nil, errors.New("seal: no key to seal the backup to")
	}
	dest, undo, err := backupDir(dest, dataDir)
	if err != nil {
		return nil, err
	}
	defer undo(&err)
	parent, err := os.MkdirTemp("", "flotilla-backup-")
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	defer os.RemoveAll(parent)
	if err := os.Chmod(parent, 0o711); err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp(parent, "stage-")
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	m, err := take(stage)
	if err != nil {
		return nil, err
	}

	path := filepath.Join(dest, SealedFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	err = sealdir.Seal(f, stage, recipients...)
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	sealed := *m
	sealed.Sealed = &BackupSeal{File: SealedFile, Bytes: fi.Size()}
	for _, r := range recipients {
		sealed.Sealed.Recipients = append(sealed.Sealed.Recipients, fmt.Sprint(r))
	}
	if err := writeManifest(dest, &sealed); err != nil {
		return nil, err
	}
	return &sealed, filecopy.Sync(dest)
}

// openBackup makes the backup in dir, of manifest m, ready to read: a
// sealed one is opened with keys into a directory only this user can read
// (in $TMPDIR), which done removes, and must hold the backup its manifest
// describes; another is read where it is (keys are not needed).
func openBackup(dir string, m *BackupManifest, keys []age.Identity) (src string, done func(), err error) {
	if m.Sealed == nil {
		return dir, func() {}, nil
	}
	if m.Sealed.File != SealedFile {
		return "", nil, fmt.Errorf("%s: sealed.file %q: a sealed backup is in %s", filepath.Join(dir, BackupManifestFile), m.Sealed.File, SealedFile)
	}
	if len(keys) == 0 {
		return "", nil, fmt.Errorf("%s is sealed to %d key(s) (%s): give --identity, a file holding the secret key of one of them",
			dir, len(m.Sealed.Recipients), sealdir.Abbrev(m.Sealed.Recipients...))
	}
	tmp, err := os.MkdirTemp("", "flotilla-opened-")
	if err != nil {
		return "", nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	f, err := os.Open(filepath.Join(dir, SealedFile))
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	if err := sealdir.Open(f, tmp, keys...); err != nil {
		return "", nil, fmt.Errorf("%s: %w", filepath.Join(dir, SealedFile), err)
	}
	inner, err := readManifest(tmp)
	if err != nil {
		return "", nil, fmt.Errorf("%s: the backup sealed in it: %w", filepath.Join(dir, SealedFile), err)
	}
	// The manifest beside it is in the clear: all of it but its sealed
	// field must be the one sealed inside, which no one without a key
	// could have changed.
	outer := *m
	outer.Sealed = nil
	a, errA := json.Marshal(inner)
	b, errB := json.Marshal(&outer)
	if err := errors.Join(errA, errB); err != nil {
		return "", nil, err
	}
	if !bytes.Equal(a, b) {
		return "", nil, fmt.Errorf("%s holds the backup of %s taken %s, but the manifest beside it is not that backup's: the two do not belong together, or the manifest was changed",
			filepath.Join(dir, SealedFile), inner.Source, inner.Created)
	}
	return tmp, func() { _ = os.RemoveAll(tmp) }, nil
}

// checkSealed checks, without a key, what can be of a sealed backup: its
// file has the size the manifest says, and a header sealing it to as many
// keys as the manifest names.
func checkSealed(dir string, m *BackupManifest) []error {
	path := filepath.Join(dir, SealedFile)
	f, err := os.Open(path)
	if err != nil {
		return []error{err}
	}
	defer f.Close()
	var problems []error
	switch fi, err := f.Stat(); {
	case err != nil:
		problems = append(problems, err)
	case fi.Size() != m.Sealed.Bytes:
		problems = append(problems, fmt.Errorf("%s: %d bytes, the manifest says %d", path, fi.Size(), m.Sealed.Bytes))
	}
	n, err := sealdir.Stanzas(f)
	switch {
	case err != nil:
		problems = append(problems, fmt.Errorf("%s: %w", path, err))
	case n != len(m.Sealed.Recipients):
		problems = append(problems, fmt.Errorf("%s: sealed to %d keys, the manifest names %d", path, n, len(m.Sealed.Recipients)))
	}
	return problems
}
