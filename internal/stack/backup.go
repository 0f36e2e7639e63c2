package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/jsbackup"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/outbox"
	"flotilla.dev/flotilla/libs/pgmanaged"
)

// BackupFormat is the version of the layout a backup's manifest describes;
// Restore refuses another.
const BackupFormat = 1

// BackupManifestFile is, in a backup, the manifest: written last, so a
// backup without one is not whole.
const BackupManifestFile = "backup.json"

// The parts of a backup besides the copied directories (BackupManifest.Files).
const (
	backupPostgres = "postgres" // the managed PostgreSQL's base backup
	backupStreams  = "streams"  // <stream>.snapshot and <stream>.json each
)

// backedUpDirs are the data directory's directories a backup copies as
// they are: the settings and bus credentials, the fleet CA, the master key.
var backedUpDirs = []string{"config", "ca", "keys"}

// Database kinds in BackupManifest.Database.
const (
	// BackupDatabaseManaged is a base backup of the managed PostgreSQL,
	// in postgres/.
	BackupDatabaseManaged = "managed"
	// BackupDatabaseDump is a pg_dump of an external database (a
	// cluster's, or flotilla up's with --database-url), in database.dump.
	BackupDatabaseDump = "dump"
)

// BackupManifest describes a backup (backup.json).
type BackupManifest struct {
	Format  int       `json:"format"`
	Version string    `json:"version"`
	Created time.Time `json:"created"`
	// Source is the data directory backed up, or the cluster's NATS
	// servers (Cluster).
	Source string `json:"source"`
	// Cluster says Source is a cluster (BackupClusterFromEnv).
	Cluster bool `json:"cluster,omitempty"`
	// Hot says the backup was taken while flotilla up ran on Source (or
	// the cluster served).
	Hot bool `json:"hot"`
	// Database is BackupDatabaseManaged or BackupDatabaseDump, of
	// DatabaseBytes.
	Database      string `json:"database"`
	DatabaseBytes int64  `json:"databaseBytes,omitempty"`
	// Streams are the JetStream streams copied (in streams/), as their
	// snapshots held them.
	Streams []jsbackup.Stream `json:"streams"`
	// Files are the data directory's directories copied as they are.
	Files []string `json:"files"`
	// Outside are files the settings name outside the data directory
	// (an operator's CA or API certificate): not in the backup.
	Outside []string `json:"outside,omitempty"`
	// ClusterFiles are, in a cluster's backup, the files its settings
	// name that it holds (in files/<variable>).
	ClusterFiles []BackupFile `json:"clusterFiles,omitempty"`
	// Sealed says the backup is sealed (SealBackup): in Sealed.File,
	// which one of Sealed.Recipients' secret keys opens.
	Sealed *BackupSeal `json:"sealed,omitempty"`
}

// Backup copies the data directory dataDir into dest, a new directory (or
// an empty one), while flotilla up runs on it or not: its settings, bus
// credentials, fleet CA and master key as they are; every JetStream stream
// by its snapshot, and then the managed PostgreSQL by a base backup taken
// while it serves (an external database by pg_dump), the outbox's forwarders held from the first snapshot of
// a stream they feed to the end of the base backup (copyConsistent), so that the
// two copies agree. Not running, flotilla up is kept from starting
// on dataDir until the backup is done, and Backup starts the managed
// PostgreSQL and the NATS store itself, stopping them after. version is
// this build's, written in the manifest. dump copies the managed
// PostgreSQL by pg_dump instead, for a restore into a cluster. On an error
// dest is left as it was found.
func Backup(ctx context.Context, dataDir, dest, version string, dump bool) (_ *BackupManifest, err error) {
	d, s, err := loadDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	dest, undo, err := backupDir(dest, d)
	if err != nil {
		return nil, err
	}
	defer undo(&err)
	m := &BackupManifest{Format: BackupFormat, Version: version, Created: time.Now().UTC(), Source: string(d)}
	release, err := datadir.Lock(d, "flotilla admin backup")
	switch {
	case errors.Is(err, datadir.ErrInUse):
		m.Hot = true
	case err != nil:
		return nil, err
	default:
		defer release()
	}

	for _, sub := range backedUpDirs {
		if _, err := os.Stat(d.Path(sub)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := filecopy.Tree(d.Path(sub), filepath.Join(dest, sub), nil); err != nil {
			return nil, err
		}
		m.Files = append(m.Files, sub)
	}
	m.Outside = outsideFiles(d, s)

	// The managed PostgreSQL (flotilla up's, or started for the backup)
	// by a base backup unless dump; an external one dumped.
	m.Database = BackupDatabaseDump
	copyDB := func() error { return pgmanaged.Dump(ctx, s.DatabaseURL, filepath.Join(dest, backupDump)) }
	if s.ManagedPostgres {
		pg, err := pgmanaged.New(managedPostgresOptions(d, s))
		if err != nil {
			return nil, fmt.Errorf("managed PostgreSQL: %w", err)
		}
		if !m.Hot {
			if err := pg.Start(ctx); err != nil {
				return nil, fmt.Errorf("managed PostgreSQL: %w", err)
			}
			defer func() { _ = pg.Stop(context.WithoutCancel(ctx)) }()
		}
		if !dump {
			m.Database = BackupDatabaseManaged
			copyDB = func() error { return pg.BaseBackup(ctx, filepath.Join(dest, backupPostgres)) }
		}
	}
	nc, stop, err := backupConn(d, s, m.Hot)
	if err != nil {
		return nil, err
	}
	defer stop()
	if m.Streams, err = copyConsistent(ctx, nc, dest, s.DatabaseURL, copyDB); err != nil {
		return nil, err
	}
	if m.DatabaseBytes, err = treeSize(filepath.Join(dest, databasePart(m))); err != nil {
		return nil, err
	}
	return m, writeManifest(dest, m)
}

// databasePart is where a backup holds its database.
func databasePart(m *BackupManifest) string {
	if m.Database == BackupDatabaseManaged {
		return backupPostgres
	}
	return backupDump
}

// copyConsistent copies every stream nc sees into dest's streams/, and
// then the database with copyDB, so that the two agree: the instances' logs, which no record refers to
// and which are the largest, first; then, the outbox's forwarders of the
// database dbURL names held (outbox.Hold), the other streams and the
// database. Every message in the streams' copy is then of a change in the
// database's, and every change in the database's copy whose messages the
// streams' lack still has them in its outbox. It returns the streams
// copied, sorted by name.
func copyConsistent(ctx context.Context, nc *nats.Conn, dest, dbURL string, copyDB func() error) ([]jsbackup.Stream, error) {
	names, err := jsbackup.Names(ctx, nc)
	if err != nil {
		return nil, err
	}
	logs, rest := partition(names, subjects.AgentLogsStream)
	dir := filepath.Join(dest, backupStreams)
	copied, err := jsbackup.Copy(ctx, nc, dir, logs...)
	if err != nil {
		return nil, err
	}
	var more []jsbackup.Stream
	err = holdWhile(ctx, dbURL, func() error {
		if more, err = jsbackup.Copy(ctx, nc, dir, rest...); err != nil {
			return err
		}
		return copyDB()
	})
	if err != nil {
		return nil, err
	}
	streams := append(copied, more...)
	slices.SortFunc(streams, func(a, b jsbackup.Stream) int { return strings.Compare(a.Name, b.Name) })
	return streams, nil
}

// holdWhile runs f while the outbox's forwarders of the database url names
// are held (outbox.Hold).
func holdWhile(ctx context.Context, url string, f func() error) (err error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("the database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	release, err := outbox.Hold(ctx, conn)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, release(context.WithoutCancel(ctx))) }()
	return f()
}

// writeManifest writes the manifest, last, and syncs the backup.
func writeManifest(dest string, m *BackupManifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dest, BackupManifestFile), append(b, '\n'), 0o600); err != nil {
		return err
	}
	return filecopy.Sync(dest)
}

// partition splits names into those in take and the others.
func partition(names []string, take ...string) (taken, rest []string) {
	for _, n := range names {
		if slices.Contains(take, n) {
			taken = append(taken, n)
		} else {
			rest = append(rest, n)
		}
	}
	return taken, rest
}

// backupConn connects to the data directory's NATS as the backup
// identity: to flotilla up's server while it runs (hot), else to a server
// started on its store for the backup alone, without a listener, stopped
// by stop.
func backupConn(d datadir.Dir, s *datadir.Settings, hot bool) (nc *nats.Conn, stop func(), err error) {
	creds := busauth.CredsFile(d.Bus(), busauth.Backup)
	if hot {
		if _, err := os.Stat(creds); err != nil {
			return nil, nil, fmt.Errorf("the backup's bus credentials: %w: flotilla up writes them as it starts; restart it with this version of flotilla first", err)
		}
		url := fmt.Sprintf("nats://127.0.0.1:%d", s.Port(datadir.OffsetNATS))
		nc, err := natsx.Connect(url, "flotilla admin backup", append(busauth.ConnectOptions(busauth.Backup, creds), nats.MaxReconnects(0))...)
		if err != nil {
			return nil, nil, fmt.Errorf("the bus of flotilla up on %s: %w", d, err)
		}
		return nc, nc.Close, nil
	}
	ns, auth, shutdown, err := storeServer(d)
	if err != nil {
		return nil, nil, err
	}
	nc, err = natsx.ConnectInProcess(ns, "flotilla admin backup", busauth.ConnectOptions(busauth.Backup, auth.Creds(busauth.Backup))...)
	if err != nil {
		shutdown()
		return nil, nil, err
	}
	return nc, func() { nc.Close(); shutdown() }, nil
}

// storeServer starts a NATS server on the data directory's JetStream
// store, trusting its bus authority, without a listener (clients connect
// in-process), for a backup or a restore while flotilla up does not run;
// shutdown stops it.
func storeServer(d datadir.Dir) (ns *server.Server, auth *busauth.Authority, shutdown func(), err error) {
	if err := os.MkdirAll(d.NATS(), 0o700); err != nil {
		return nil, nil, nil, err
	}
	if auth, err = busauth.LoadOrCreate(d.Bus()); err != nil {
		return nil, nil, nil, err
	}
	ns, err = natsx.StartEmbedded(natsx.EmbeddedOptions{ServerName: "flotilla", StoreDir: d.NATS(), Auth: auth.Configure, DontListen: true})
	if err != nil {
		return nil, nil, nil, err
	}
	return ns, auth, func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}, nil
}

// restorerCreds writes, for the time of a restore, the credentials of a
// restore user the bus authority signs (busauth.RestorerPermissions) into
// a temporary file, which remove removes.
func restorerCreds(auth *busauth.Authority) (file string, remove func(), err error) {
	creds, err := auth.Mint(busauth.Restorer, busauth.RestorerPermissions())
	if err != nil {
		return "", nil, err
	}
	f, err := os.CreateTemp("", "flotilla-restore-*.creds")
	if err != nil {
		return "", nil, err
	}
	remove = func() { _ = os.Remove(f.Name()) }
	_, err = f.Write(creds)
	if err = errors.Join(err, f.Close()); err != nil {
		remove()
		return "", nil, err
	}
	return f.Name(), remove, nil
}

// Restore makes dataDir, which must not exist or be empty, a data
// directory holding what the backup in dir holds: flotilla up then starts
// on it as it stood when the backup was taken (the managed PostgreSQL
// recovering from its base backup, the streams created again from their
// snapshots, their consumers where they were). A dump (a cluster's
// backup, or one taken with --dump) is restored into databaseURL when
// given, an empty database, which the settings then name, and otherwise
// into the data directory's managed PostgreSQL (started for the restore on
// a free port); the backup of a Flotilla on an external database needs
// databaseURL. A cluster's backup gets new settings, the ones flotilla up
// makes on a first start, with the cluster's fleet CA and master key where
// they name them, and its streams one replica each. A sealed backup is
// opened with keys. The local provider's VMs and disks are not in a
// backup. On an error dataDir is left as it was found, and so is the
// external database (restored last, in one transaction).
func Restore(ctx context.Context, dir, dataDir, databaseURL string, keys []age.Identity) (_ *BackupManifest, err error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Database == BackupDatabaseManaged && databaseURL != "":
		return nil, fmt.Errorf("--database-url: %s holds the managed PostgreSQL, restored into the data directory: drop --database-url", dir)
	case m.Cluster:
		if missing := missingClusterFiles(m); len(missing) > 0 {
			return nil, fmt.Errorf("%s is the backup of a cluster without %v (the cluster's settings named none): a data directory needs its fleet CA and the master key of its secrets", dir, missing)
		}
	}
	if databaseURL != "" {
		if err := emptyDatabase(ctx, databaseURL); err != nil {
			return nil, err
		}
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	src, done, err := openBackup(dir, m, keys)
	if err != nil {
		return nil, err
	}
	defer done()
	d := datadir.Dir(abs)
	cleanup, err := newDir(string(d))
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w: restore into a new one", d, err)
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	release, err := datadir.Lock(d, "flotilla admin restore")
	if err != nil {
		return nil, err
	}
	defer release()
	s, err := restoreFiles(d, src, m)
	if err != nil {
		return nil, err
	}
	// The streams before the database: an external one is loaded (in one
	// transaction) only once they are back, so that a failure leaves it as
	// it was; the data directory is removed whatever fails.
	if err := restoreStreams(ctx, d, src, m); err != nil {
		return nil, err
	}
	if err := restoreDatabase(ctx, d, s, src, m, databaseURL); err != nil {
		return nil, err
	}
	return m, nil
}

// restoreStreams puts the backup's streams (at src) in the new data
// directory d's store, through the JetStream API as for a cluster, to a
// server on the store; a cluster's with one replica each.
func restoreStreams(ctx context.Context, d datadir.Dir, src string, m *BackupManifest) error {
	ns, auth, shutdown, err := storeServer(d)
	if err != nil {
		return err
	}
	defer shutdown()
	creds, remove, err := restorerCreds(auth)
	if err != nil {
		return err
	}
	defer remove()
	nc, err := natsx.ConnectInProcess(ns, "flotilla admin restore", busauth.ConnectOptions(busauth.Restorer, creds)...)
	if err != nil {
		return err
	}
	defer nc.Close()
	streams, err := jsbackup.Send(ctx, nc, filepath.Join(src, backupStreams), 1)
	if err != nil {
		return err
	}
	if len(streams) != len(m.Streams) {
		return fmt.Errorf("%d streams restored, the manifest names %d", len(streams), len(m.Streams))
	}
	return nil
}

// restoreFiles puts into the new data directory d the files of the backup
// opened at src, and returns its settings: a data directory's directories
// as they were; for a cluster's, the settings flotilla up makes on a first
// start, with the cluster's CA and master key where they name them.
func restoreFiles(d datadir.Dir, src string, m *BackupManifest) (*datadir.Settings, error) {
	if m.Cluster {
		s, err := datadir.Prepare(d, datadir.Overrides{})
		if err != nil {
			return nil, err
		}
		for v, path := range dataDirFiles(d, s) {
			if err := filecopy.File(filepath.Join(src, backupFiles, v), path); err != nil {
				return nil, fmt.Errorf("%s: %w", v, err)
			}
		}
		return s, nil
	}
	for _, sub := range m.Files {
		if !isBackedUpDir(sub) {
			return nil, fmt.Errorf("%s: files: %q is not a directory a backup holds (%v)", BackupManifestFile, sub, backedUpDirs)
		}
		if err := filecopy.Tree(filepath.Join(src, sub), d.Path(sub), nil); err != nil {
			return nil, err
		}
	}
	s, err := datadir.Load(d)
	if err != nil {
		return nil, fmt.Errorf("the backup's settings: %w", err)
	}
	return s, nil
}

// restoreDatabase restores the backup's database (at src) for the data
// directory d of settings s: a base backup as the managed PostgreSQL's
// directory; a dump into databaseURL (an external database, which the
// settings then name) or, without it, into the managed PostgreSQL, which
// it starts on a free port for the time of the restore (the ports of the
// settings may be the running original's).
func restoreDatabase(ctx context.Context, d datadir.Dir, s *datadir.Settings, src string, m *BackupManifest, databaseURL string) error {
	switch {
	case m.Database == BackupDatabaseManaged:
		pg, err := pgmanaged.New(managedPostgresOptions(d, s))
		if err != nil {
			return fmt.Errorf("managed PostgreSQL: %w", err)
		}
		return pg.Restore(filepath.Join(src, backupPostgres))
	case databaseURL != "":
		if err := pgmanaged.RestoreDump(ctx, databaseURL, filepath.Join(src, backupDump)); err != nil {
			return err
		}
		s.DatabaseURL, s.ManagedPostgres, s.PostgresPassword, s.ServicePostgresPassword = databaseURL, false, "", ""
		return datadir.Save(d, s)
	case !s.ManagedPostgres:
		return fmt.Errorf("the backup holds a dump of an external database (%s): give --database-url, an empty database to restore it into", s.DatabaseURL)
	}
	opts := managedPostgresOptions(d, s)
	port, err := freeLocalPort()
	if err != nil {
		return err
	}
	opts.Port = port
	pg, err := pgmanaged.Init(ctx, opts)
	if err != nil {
		return fmt.Errorf("managed PostgreSQL: %w", err)
	}
	if err := pg.Start(ctx); err != nil {
		return fmt.Errorf("managed PostgreSQL: %w", err)
	}
	defer func() { _ = pg.Stop(context.WithoutCancel(ctx)) }()
	return pgmanaged.RestoreDump(ctx, pg.URL(), filepath.Join(src, backupDump))
}

// missingClusterFiles are the files a cluster's backup lacks to make a data
// directory: its CA's certificate and key, the master key.
func missingClusterFiles(m *BackupManifest) []string {
	var missing []string
	for _, v := range []string{varCACert, varCAKey, varMasterKey} {
		if !slices.ContainsFunc(m.ClusterFiles, func(f BackupFile) bool { return f.Var == v }) {
			missing = append(missing, v)
		}
	}
	return missing
}

// freeLocalPort is a TCP port on 127.0.0.1 free a moment ago.
func freeLocalPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// readManifest reads a backup's manifest, which must be of BackupFormat.
func readManifest(dir string) (*BackupManifest, error) {
	path := filepath.Join(dir, BackupManifestFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a Flotilla backup, or not a whole one: it has no %s", dir, BackupManifestFile)
	}
	if err != nil {
		return nil, err
	}
	var m BackupManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if m.Format != BackupFormat {
		return nil, fmt.Errorf("%s: format %d, but this flotilla restores format %d", path, m.Format, BackupFormat)
	}
	if kinds := []string{BackupDatabaseManaged, BackupDatabaseDump}; !slices.Contains(kinds, m.Database) {
		return nil, fmt.Errorf("%s: database %q is not one of %v", path, m.Database, kinds)
	}
	return &m, nil
}

// loadDataDir opens an existing data directory and its settings.
func loadDataDir(dataDir string) (datadir.Dir, *datadir.Settings, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", nil, err
	}
	d := datadir.Dir(abs)
	s, err := datadir.Load(d)
	if err != nil {
		return "", nil, fmt.Errorf("no Flotilla data directory at %s: %w", d, err)
	}
	return d, s, nil
}

// backupDir makes dest, as an absolute path, a new backup directory
// (newDir), which must not be inside the data directory d (when given);
// undo, deferred with the caller's error, removes what was put in it if
// that error is set.
func backupDir(dest string, d datadir.Dir) (abs string, undo func(*error), err error) {
	if abs, err = filepath.Abs(dest); err != nil {
		return "", nil, err
	}
	if d != "" && (abs == string(d) || strings.HasPrefix(abs, string(d)+string(filepath.Separator))) {
		return "", nil, fmt.Errorf("backup directory %s: it is inside the data directory %s: choose one outside it", abs, d)
	}
	cleanup, err := newDir(abs)
	if err != nil {
		return "", nil, fmt.Errorf("backup directory %s: %w", abs, err)
	}
	return abs, func(errp *error) {
		if *errp != nil {
			cleanup()
		}
	}, nil
}

// newDir creates dir, or takes it if it is an empty directory, for a
// backup or a restore (mode 0755: PostgreSQL's system user enters it);
// cleanup removes what was put in it, and dir too when newDir created it.
func newDir(dir string) (cleanup func(), err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Made here and nowhere else: two backups into one new path do
		// not both take it.
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		return func() { _ = os.RemoveAll(dir) }, nil
	case err != nil:
		return nil, err
	case len(entries) > 0:
		return nil, errors.New("it exists and is not empty")
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	return func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}, nil
}

// outsideFiles are the files the settings name outside d.
func outsideFiles(d datadir.Dir, s *datadir.Settings) []string {
	var out []string
	for _, f := range []string{s.CACertFile, s.CAKeyFile, s.TLSCertFile, s.TLSKeyFile} {
		if f == "" {
			continue
		}
		// A relative path is relative to where flotilla up started: not
		// known to be in the directory.
		if rel, err := filepath.Rel(string(d), f); !filepath.IsAbs(f) || err != nil || !filepath.IsLocal(rel) || !isBackedUpDir(strings.Split(rel, string(filepath.Separator))[0]) {
			out = append(out, f)
		}
	}
	return out
}

func isBackedUpDir(name string) bool { return slices.Contains(backedUpDirs, name) }

// treeSize is the size of the files under dir.
func treeSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		fi, err := e.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	return n, err
}

// backupPrefix begins the name of each backup backupName makes in a
// directory of backups.
const backupPrefix = "flotilla-"

// backupName is the name of a backup taken at t in a directory of backups:
// flotilla-<UTC time>, which sorts by time.
func backupName(t time.Time) string { return backupPrefix + t.UTC().Format("20060102T150405Z") }

// NewBackupIn makes, in into (a directory of backups, made if missing),
// the empty directory of a backup taken at t, and returns its path:
// backupName, or, when another backup took that name in the same second,
// backupName-2, -3… Each backup makes its own (os.Mkdir), so two racing
// never share one. Remove it if the backup fails.
func NewBackupIn(into string, t time.Time) (string, error) {
	if err := os.MkdirAll(into, 0o755); err != nil {
		return "", err
	}
	name := backupName(t)
	for i := 1; i <= 100; i++ {
		path := filepath.Join(into, name)
		if i > 1 {
			path += fmt.Sprintf("-%d", i)
		}
		switch err := os.Mkdir(path, 0o755); {
		case err == nil:
			return path, nil
		case !errors.Is(err, os.ErrExist):
			return "", err
		}
	}
	return "", fmt.Errorf("%s: a hundred backups were taken at %s", into, name)
}

// PruneBackups removes, from dir (a directory of backups, backupName),
// the whole backups of source (BackupManifest.Source: a data directory,
// or a cluster's NATS URL) but the newest keep, and returns their paths.
// Anything else in dir is left alone: backups of another source, and
// directories without a manifest (not Flotilla's, or a backup whose taker
// died).
func PruneBackups(dir, source string, keep int) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("keep: %d: at least 1 backup is kept", keep)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type found struct {
		path    string
		created time.Time
	}
	var ours []found
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), backupPrefix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		m, err := readManifest(path)
		if err != nil || m.Source != source {
			continue
		}
		ours = append(ours, found{path, m.Created})
	}
	slices.SortFunc(ours, func(a, b found) int { return b.created.Compare(a.created) })
	var removed []string
	for _, f := range ours[min(keep, len(ours)):] {
		if err := os.RemoveAll(f.path); err != nil {
			return removed, fmt.Errorf("remove the old backup %s: %w", f.path, err)
		}
		removed = append(removed, f.path)
	}
	return removed, nil
}

// VerifyBackup checks the backup in dir without restoring it: its
// manifest; each stream's snapshot whole, holding what the manifest says;
// the database (a base backup by pg_verifybackup, a dump read through by
// pg_restore); the copied directories and files there. A sealed backup
// is opened with keys and what it holds checked the same way; without
// keys, only its sealed file's size and header are checked (checkSealed):
// its contents are not read. It returns the manifest and every problem
// found (none: the backup would restore).
func VerifyBackup(ctx context.Context, dir string, keys []age.Identity) (*BackupManifest, []error, error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, nil, err
	}
	if m.Sealed != nil && len(keys) == 0 {
		return m, checkSealed(dir, m), nil
	}
	src, done, err := openBackup(dir, m, keys)
	if err != nil {
		return m, []error{err}, nil
	}
	defer done()
	var problems []error
	for _, want := range m.Streams {
		got, err := jsbackup.Check(filepath.Join(src, backupStreams), want.Name)
		switch {
		case err != nil:
			problems = append(problems, fmt.Errorf("stream %s: %w", want.Name, err))
		case got.Messages != want.Messages || got.LastSeq != want.LastSeq:
			problems = append(problems, fmt.Errorf("stream %s: its snapshot holds %d messages up to %d, the manifest says %d up to %d",
				want.Name, got.Messages, got.LastSeq, want.Messages, want.LastSeq))
		}
	}
	switch m.Database {
	case BackupDatabaseManaged:
		err = pgmanaged.VerifyBaseBackup(ctx, filepath.Join(src, backupPostgres))
	default:
		err = pgmanaged.VerifyDump(ctx, filepath.Join(src, backupDump))
	}
	if err != nil {
		problems = append(problems, fmt.Errorf("database: %w", err))
	}
	for _, sub := range m.Files {
		if fi, err := os.Stat(filepath.Join(src, sub)); err != nil || !fi.IsDir() {
			problems = append(problems, fmt.Errorf("%s/: missing (%v)", sub, err))
		}
	}
	for _, f := range m.ClusterFiles {
		if _, err := os.Stat(filepath.Join(src, backupFiles, f.Var)); err != nil {
			problems = append(problems, fmt.Errorf("%s's file: %w", f.Var, err))
		}
	}
	return m, problems, nil
}
