// Package filecopy copies directory trees for backups and restores: files
// and directories with their permission bits, every one synced to disk
// before the copy is reported done. SHA256 names a file's content, as a
// binary handed to a VM is checked.
package filecopy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Tree copies the directory from, and everything in it, to to, which must
// not exist or be an empty directory; files already at to's paths are not
// overwritten (an error). Only directories and regular files are copied:
// anything else (a socket, a link) is an error naming it. each, when not
// nil, is called with every path created (to itself included), to give it
// to its owner. Everything is synced before Tree returns; on an error the
// caller removes what was copied.
func Tree(from, to string, each func(path string) error) error {
	err := filepath.WalkDir(from, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		info, err := e.Info()
		if err != nil {
			return err
		}
		switch {
		case e.IsDir():
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
			if err := os.Chmod(target, info.Mode().Perm()); err != nil {
				return err
			}
		case e.Type().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: neither a file nor a directory (%v)", path, e.Type())
		}
		if each != nil {
			return each(target)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	if err := Sync(to); err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return nil
}

// File copies the regular file from to a new path to (mode 0600, its
// directory made if missing, 0700), synced.
func File(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return err
	}
	if err := copyFile(from, to, 0o600); err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return Sync(to)
}

// copyFile copies a regular file to a new path with mode perm.
func copyFile(from, to string, perm fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// Sync flushes every file and directory under dir, and dir itself, to disk.
func Sync(dir string) error {
	return filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		return errors.Join(f.Sync(), f.Close())
	})
}

// SHA256 is the hex SHA-256 of a file's content.
func SHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
