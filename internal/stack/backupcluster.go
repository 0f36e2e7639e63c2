package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/jsbackup"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/pgmanaged"
)

// The parts of a cluster's backup besides the streams.
const (
	backupDump  = "database.dump"
	backupFiles = "files" // the files the settings name, by variable
)

// BackupFile is a file a cluster's settings name, copied into a backup.
type BackupFile struct {
	// Var is the environment variable that names it; Path the path it
	// named on the host the backup was taken on.
	Var  string `json:"var"`
	Path string `json:"path"`
}

// The variables of a manager's settings naming the files a cluster's
// backup holds (clusterFiles).
const (
	varCACert    = "FLOTILLA_CA_CERT_FILE"
	varCAKey     = "FLOTILLA_CA_KEY_FILE"
	varMasterKey = "FLOTILLA_KMS_KEY_FILE"
)

// clusterFiles are the files of a manager's settings a cluster's backup
// copies: the fleet CA's certificate and key, the secret brokers' master
// key.
func clusterFiles(ec EnvConfig) []BackupFile {
	var out []BackupFile
	for _, f := range []BackupFile{{varCACert, ec.CACertFile}, {varCAKey, ec.CAKeyFile}, {varMasterKey, ec.KMSKeyFile}} {
		if f.Path != "" {
			out = append(out, f)
		}
	}
	return out
}

// BackupClusterFromEnv backs a cluster up into dest, a new directory (or an
// empty one), from a manager host, with the settings its services read from
// the environment (environ; nil: the process's): every JetStream stream by
// its snapshot, through FLOTILLA_NATS_URL as the backup identity (creds,
// its .creds file), and then the database by pg_dump through
// FLOTILLA_DATABASE_OWNER_URL, so that the two agree (copyConsistent); the fleet CA's certificate and key and the
// master key the settings name on this host. The bus authority's keys are
// not in it: they stay where `flotilla admin bus-credentials init` made
// them. On an error dest is left as it was found.
func BackupClusterFromEnv(ctx context.Context, environ map[string]string, creds, dest, version string) (_ *BackupManifest, err error) {
	ec, err := LoadEnvConfig(subjects.Inventory, environ, nil)
	if err != nil {
		return nil, err
	}
	var errs []error
	if creds == "" {
		errs = append(errs, errors.New("--creds: is required: the backup identity's credentials (backup.creds, which flotilla admin bus-credentials writes)"))
	}
	if ec.DatabaseOwnerURL == "" {
		errs = append(errs, errors.New("FLOTILLA_DATABASE_OWNER_URL: is required: pg_dump reads the database as its owner"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	dest, undo, err := backupDir(dest, "")
	if err != nil {
		return nil, err
	}
	defer undo(&err)
	m := &BackupManifest{Format: BackupFormat, Version: version, Created: time.Now().UTC(), Source: clusterSource(ec),
		Cluster: true, Hot: true, Database: BackupDatabaseDump}
	for _, f := range clusterFiles(ec) {
		if err := filecopy.File(f.Path, filepath.Join(dest, backupFiles, f.Var)); err != nil {
			return nil, fmt.Errorf("%s: %w", f.Var, err)
		}
		m.ClusterFiles = append(m.ClusterFiles, f)
	}

	nc, err := clusterConn(ec, busauth.Backup, creds)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if m.Streams, err = copyConsistent(ctx, nc, dest, ec.DatabaseOwnerURL, func() error {
		return pgmanaged.Dump(ctx, ec.DatabaseOwnerURL, filepath.Join(dest, backupDump))
	}); err != nil {
		return nil, err
	}
	if m.DatabaseBytes, err = treeSize(filepath.Join(dest, backupDump)); err != nil {
		return nil, err
	}
	return m, writeManifest(dest, m)
}

// RestoreClusterFromEnv restores a cluster's backup (dir) into a cluster,
// or a data directory's taken with its database dumped (--dump, to move a
// Flotilla from flotilla up into a cluster; its streams get the cluster's
// FLOTILLA_STREAM_REPLICAS),
// from a host with the settings of its services in the environment
// (environ; nil: the process's), before its services first start: the
// backed-up files where the settings name them now, unless a file is there
// (it is kept); every stream through FLOTILLA_NATS_URL (none may exist),
// as a user minted for the time of the restore by the bus authority in
// busDir (the directory of `flotilla admin bus-credentials init`, which
// the cluster's servers trust); then the database by pg_restore through
// FLOTILLA_DATABASE_OWNER_URL (it must hold no table), in one transaction.
// It is all or nothing: a failure at any step undoes the steps before it
// (the files written, the streams created), so that it can be run again.
// A sealed backup is opened with keys. It returns the manifest and the
// files written.
func RestoreClusterFromEnv(ctx context.Context, environ map[string]string, busDir, dir string, keys []age.Identity) (_ *BackupManifest, _ []string, err error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, nil, err
	}
	if !m.Cluster && m.Database != BackupDatabaseDump {
		return nil, nil, fmt.Errorf("%s is the backup of a data directory (%s) whose database is a base backup of its managed PostgreSQL: restore it with --data-dir, or take one with --dump to move it into a cluster", dir, m.Source)
	}
	ec, err := LoadEnvConfig(subjects.Inventory, environ, nil)
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	if busDir == "" {
		errs = append(errs, errors.New("--bus-dir: is required: the bus authority's directory (flotilla admin bus-credentials init --dir), whose keys the cluster trusts"))
	} else if _, err := os.Stat(filepath.Join(busDir, "account.nk")); err != nil {
		errs = append(errs, fmt.Errorf("--bus-dir: %s holds no bus authority: %w", busDir, err))
	}
	if ec.DatabaseOwnerURL == "" {
		errs = append(errs, errors.New("FLOTILLA_DATABASE_OWNER_URL: is required: the database is restored as its owner"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	if err := emptyDatabase(ctx, ec.DatabaseOwnerURL); err != nil {
		return nil, nil, err
	}
	auth, err := busauth.LoadOrCreate(busDir)
	if err != nil {
		return nil, nil, err
	}
	creds, remove, err := restorerCreds(auth)
	if err != nil {
		return nil, nil, err
	}
	defer remove()
	nc, err := clusterConn(ec, busauth.Restorer, creds)
	if err != nil {
		return nil, nil, err
	}
	defer nc.Close()
	names, err := jsbackup.Names(ctx, nc)
	if err != nil {
		return nil, nil, err
	}
	if len(names) > 0 {
		return nil, nil, fmt.Errorf("the cluster already has streams %v: restore into a cluster whose services have not started", names)
	}
	src, done, err := openBackup(dir, m, keys)
	if err != nil {
		return nil, nil, err
	}
	defer done()
	files, err := filesToWrite(ec, src, m)
	if err != nil {
		return nil, nil, err
	}

	// All or nothing: the files (new ones), then the streams (Send deletes
	// those it made if one fails), then the database in one transaction;
	// what was done before a failure is undone.
	var written []string
	defer func() {
		if err != nil {
			for _, f := range written {
				_ = os.Remove(f)
			}
		}
	}()
	for path, from := range files {
		if err := filecopy.File(from, path); err != nil {
			return nil, nil, err
		}
		written = append(written, path)
	}
	slices.Sort(written)
	// The cluster's number of replicas (a data directory's streams have one).
	restored, err := jsbackup.Send(ctx, nc, filepath.Join(src, backupStreams), ec.StreamReplicas)
	if err != nil {
		return nil, nil, err
	}
	if err := pgmanaged.RestoreDump(ctx, ec.DatabaseOwnerURL, filepath.Join(src, backupDump)); err != nil {
		names := make([]string, 0, len(restored))
		for _, st := range restored {
			names = append(names, st.Name)
		}
		return nil, nil, errors.Join(err, jsbackup.Remove(context.WithoutCancel(ctx), nc, names...))
	}
	return m, written, nil
}

// filesToWrite are the backup's files to write where the settings name
// them now: by path there, the file in the backup; those not there yet.
// One there already must be the backup's, and one the settings name that
// the backup lacks (a data directory's CA kept outside it, secrets sealed
// by AWS KMS rather than a master key) must be there already: without it
// the cluster would make a CA its agents do not trust, or hold secrets it
// cannot open. Checked before anything is restored.
func filesToWrite(ec EnvConfig, dir string, m *BackupManifest) (map[string]string, error) {
	held, err := heldFiles(dir, m)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, f := range clusterFiles(ec) {
		from, ok := held[f.Var]
		if !ok {
			if _, err := os.Stat(f.Path); err != nil {
				return nil, fmt.Errorf("%s: the backup holds no such file, and none is at %s (%v): copy there the one the backed-up Flotilla used, then restore", f.Var, f.Path, err)
			}
			continue
		}
		b, err := os.ReadFile(from)
		if err != nil {
			return nil, err
		}
		switch have, err := os.ReadFile(f.Path); {
		case err == nil && bytes.Equal(have, b):
		case err == nil:
			return nil, fmt.Errorf("%s: %s holds another file than the backup's: move it away, or point %s elsewhere", f.Var, f.Path, f.Var)
		case errors.Is(err, os.ErrNotExist):
			out[f.Path] = from
		default:
			return nil, fmt.Errorf("%s: %w", f.Var, err)
		}
	}
	return out, nil
}

// heldFiles are the files clusterFiles names that the backup in dir holds,
// by variable: a cluster's in files/<variable>; a data directory's where
// its settings keep them (unless they name others, outside it: then they
// are not in it).
func heldFiles(dir string, m *BackupManifest) (map[string]string, error) {
	held := map[string]string{}
	if m.Cluster {
		for _, f := range m.ClusterFiles {
			held[f.Var] = filepath.Join(dir, backupFiles, f.Var)
		}
		return held, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	bd := datadir.Dir(abs)
	s, err := datadir.Load(bd)
	if err != nil {
		return nil, fmt.Errorf("the backup's settings: %w", err)
	}
	for v, path := range dataDirFiles(bd, s) {
		if _, err := os.Stat(path); err == nil && strings.HasPrefix(path, abs+string(filepath.Separator)) {
			held[v] = path
		}
	}
	return held, nil
}

// dataDirFiles are the files of data directory d (of settings s) a
// cluster's settings name, by their variable: the fleet CA's certificate
// and key, the master key.
func dataDirFiles(d datadir.Dir, s *datadir.Settings) map[string]string {
	cert, key := s.CAFiles(d)
	return map[string]string{varCACert: cert, varCAKey: key, varMasterKey: d.MasterKey()}
}

// ClusterSourceFromEnv is the source a cluster's backup taken with the
// settings in environ (nil: the process's) names in its manifest
// (BackupManifest.Source).
func ClusterSourceFromEnv(environ map[string]string) (string, error) {
	ec, err := LoadEnvConfig(subjects.Inventory, environ, nil)
	if err != nil {
		return "", err
	}
	return clusterSource(ec), nil
}

// clusterSource names a cluster in its backups' manifests: its NATS
// servers' URLs, sorted (each manager lists its own first).
func clusterSource(ec EnvConfig) string {
	urls := strings.Split(ec.NATSURL, ",")
	for i := range urls {
		urls[i] = strings.TrimSpace(urls[i])
	}
	slices.Sort(urls)
	return strings.Join(urls, ",")
}

// clusterConn connects to a cluster's NATS as identity with creds, over
// TLS as the settings say.
func clusterConn(ec EnvConfig, identity, creds string) (*nats.Conn, error) {
	opts := append(busauth.ConnectOptions(identity, creds), nats.MaxReconnects(0))
	if ec.NATSCAFile != "" {
		tlsConf, err := natsx.ClientTLS(ec.NATSCAFile, ec.NATSCertFile, ec.NATSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("FLOTILLA_NATS_CA_FILE: %w", err)
		}
		opts = append(opts, nats.Secure(tlsConf))
	}
	return natsx.Connect(ec.NATSURL, "flotilla admin "+identity, opts...)
}

// emptyDatabase fails unless the database url names holds no table of its
// own.
func emptyDatabase(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("the database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`).Scan(&n); err != nil {
		return fmt.Errorf("the database: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("the database already holds %d tables: restore into an empty one, before the services first start", n)
	}
	return nil
}
