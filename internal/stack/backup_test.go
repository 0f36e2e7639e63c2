package stack_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/endpoints"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/jsbackup"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/sealdir"
	"flotilla.dev/flotilla/libs/testkit"
)

// clusterSite is a cluster's bus, database and the files its settings
// name, and those settings as a manager's environment holds them.
type clusterSite struct {
	bus                   *testkit.Bus
	db                    string
	caCert, caKey, kmsKey string
	env                   map[string]string
}

func newClusterSite(t *testing.T) *clusterSite {
	dir := t.TempDir()
	c := &clusterSite{bus: testkit.SecureNATS(t), db: testkit.NewDatabase(t),
		caCert: filepath.Join(dir, "ca", "ca.crt"), caKey: filepath.Join(dir, "ca", "ca.key"), kmsKey: filepath.Join(dir, "keys", "master.key")}
	c.env = map[string]string{"FLOTILLA_NATS_URL": c.bus.URL, "FLOTILLA_DATABASE_OWNER_URL": c.db,
		"FLOTILLA_CA_CERT_FILE": c.caCert, "FLOTILLA_CA_KEY_FILE": c.caKey, "FLOTILLA_KMS_KEY_FILE": c.kmsKey}
	return c
}

// start runs the inventory, the CA and the secret broker on the site.
func (c *clusterSite) start(t *testing.T) *rpc.Client {
	stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Inventory, subjects.CA, subjects.Secrets},
		DatabaseURL: c.db, CACertFile: c.caCert, CAKeyFile: c.caKey, KMSKeyFile: c.kmsKey, CreateKMSKey: true}, c.bus))
	return rpc.NewClient(c.bus.Conn(t, subjects.Gateway), subjects.Gateway, 0)
}

// TestAClusterBacksUpAndRestoresIntoAnother: a cluster's backup, taken
// from a manager's settings while its services run and sealed to a key,
// holds nothing in the clear but its manifest; with that key alone it
// restores into another cluster (its own bus authority, an empty
// database) before that one's services first start: they serve the
// records, the events and the files of the first; a second restore is
// refused and changes nothing.
func TestAClusterBacksUpAndRestoresIntoAnother(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	a := newClusterSite(t)
	gw := a.start(t)
	created, err := rpc.Call(ctx, gw, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{
		Network: &inventoryv1.Network{Name: "lab", Provider: "local", HttpsStrategy: "none"}}, rpc.As(vocab.User("admin")))
	if err != nil {
		t.Fatal(err)
	}
	// The backup is sealed to a key: only it opens the backup.
	keyFile := filepath.Join(t.TempDir(), "backup.key")
	recipient, err := sealdir.NewKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	recipients, err := sealdir.Recipients([]string{recipient}, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := sealdir.Identities([]string{keyFile})
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "backup")
	m, err := stack.SealBackup(backup, "", recipients, func(stage string) (*stack.BackupManifest, error) {
		return stack.BackupClusterFromEnv(ctx, a.env, a.bus.Creds[busauth.Backup], stage, "test")
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Database != stack.BackupDatabaseDump || len(m.ClusterFiles) != 3 || len(m.Streams) == 0 || m.DatabaseBytes == 0 ||
		m.Sealed == nil || len(m.Sealed.Recipients) != 1 || m.Sealed.Recipients[0] != recipient {
		t.Fatalf("the manifest: %+v", m)
	}
	entries, err := os.ReadDir(backup)
	if err != nil || len(entries) != 2 || entries[0].Name() != stack.BackupManifestFile || entries[1].Name() != stack.SealedFile {
		t.Fatalf("a sealed backup holds %v (%v): want the manifest and the sealed file alone", entries, err)
	}
	sealed, err := os.ReadFile(filepath.Join(backup, stack.SealedFile))
	if err != nil {
		t.Fatal(err)
	}
	if caKey, err := os.ReadFile(a.caKey); err != nil || bytes.Contains(sealed, caKey[40:80]) {
		t.Fatalf("the sealed backup holds the CA's key in the clear (%v)", err)
	}

	b := newClusterSite(t)
	// A backup without the master key (the cluster's settings named none)
	// is refused where the settings name one that is not there: the
	// secrets would not open.
	noKey := map[string]string{}
	for k, v := range a.env {
		if k != "FLOTILLA_KMS_KEY_FILE" {
			noKey[k] = v
		}
	}
	partial := filepath.Join(t.TempDir(), "partial")
	if _, err := stack.BackupClusterFromEnv(ctx, noKey, a.bus.Creds[busauth.Backup], partial, "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), partial, nil); err == nil ||
		!strings.Contains(err.Error(), "FLOTILLA_KMS_KEY_FILE: the backup holds no such file, and none is at "+b.kmsKey) {
		t.Errorf("a backup without the master key restored where it is missing: %v", err)
	}
	// A backup whose last snapshot is damaged fails after the streams
	// before it were restored: they are deleted again, the files written
	// removed and the database left empty, so the restore can run again.
	damaged := filepath.Join(t.TempDir(), "damaged")
	if _, err := stack.BackupClusterFromEnv(ctx, a.env, a.bus.Creds[busauth.Backup], damaged, "test"); err != nil {
		t.Fatal(err)
	}
	snaps, err := filepath.Glob(filepath.Join(damaged, "streams", "*.snapshot"))
	if err != nil || len(snaps) < 2 {
		t.Fatalf("the damaged backup's snapshots: %v %v", snaps, err)
	}
	last := snaps[len(snaps)-1]
	fi, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(last, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	_, _, err = stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), damaged, nil)
	if err == nil || !strings.Contains(err.Error(), "restored before it were deleted again") {
		t.Fatalf("a restore of a damaged backup: %v", err)
	}
	if names, err := jsbackup.Names(ctx, b.bus.Conn(t, busauth.Observer)); err != nil || len(names) != 0 {
		t.Errorf("streams left by a failed restore: %v %v", names, err)
	}
	for _, f := range []string{b.caCert, b.caKey, b.kmsKey} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left by a failed restore: %v", f, err)
		}
	}
	if _, _, err := stack.RestoreClusterFromEnv(ctx, b.env, "", backup, keys); err == nil || !strings.Contains(err.Error(), "--bus-dir: is required") {
		t.Errorf("a restore without the bus authority: %v", err)
	}
	// Another CA where the settings name the backup's is refused before
	// anything is restored.
	if err := os.MkdirAll(filepath.Dir(b.caCert), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.caCert, []byte("another CA"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), backup, keys); err == nil || !strings.Contains(err.Error(), "holds another file than the backup's") {
		t.Errorf("a restore over another CA: %v", err)
	}
	if err := os.Remove(b.caCert); err != nil {
		t.Fatal(err)
	}
	// Without its key, or with another, it is not opened, and nothing is
	// restored.
	if _, _, err := stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), backup, nil); err == nil || !strings.Contains(err.Error(), "is sealed to 1 key(s)") {
		t.Errorf("a sealed backup restored without a key: %v", err)
	}
	otherKey := filepath.Join(t.TempDir(), "other.key")
	if _, err := sealdir.NewKey(otherKey); err != nil {
		t.Fatal(err)
	}
	other, err := sealdir.Identities([]string{otherKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), backup, other); !errors.Is(err, sealdir.ErrNoKey) {
		t.Errorf("a sealed backup restored with another key: %v", err)
	}
	_, written, err := stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), backup, keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != 3 {
		t.Errorf("files written: %v", written)
	}
	for _, f := range [][2]string{{a.caCert, b.caCert}, {a.caKey, b.caKey}, {a.kmsKey, b.kmsKey}} {
		x, errX := os.ReadFile(f[0])
		y, errY := os.ReadFile(f[1])
		if errX != nil || errY != nil || !bytes.Equal(x, y) {
			t.Errorf("%s is not the backup's %s: %v %v", f[1], f[0], errX, errY)
		}
	}
	if _, _, err := stack.RestoreClusterFromEnv(ctx, b.env, b.bus.Authority().Dir(), backup, keys); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("a second restore: %v", err)
	}

	gwB := b.start(t)
	got, err := rpc.Call(ctx, gwB, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: created.GetId()}, rpc.As(vocab.User("admin")))
	if err != nil || got.GetName() != "lab" {
		t.Fatalf("the network in the restored cluster: %v %v", got, err)
	}
	js, err := jetstream.New(b.bus.Conn(t, busauth.Observer))
	if err != nil {
		t.Fatal(err)
	}
	events, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := events.GetLastMsgForSubject(ctx, subjects.Event(subjects.NounNetwork, created.GetId(), string(vocab.VerbCreated)))
	if err != nil || msg.Time.After(time.Now()) {
		t.Fatalf("the network's event in the restored cluster: %v", err)
	}
	// The restored cluster takes writes.
	if _, err := rpc.Call(ctx, gwB, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{
		Network: &inventoryv1.Network{Name: "after", Provider: "local", HttpsStrategy: "none"}}, rpc.As(vocab.User("admin"))); err != nil {
		t.Fatal(err)
	}
}

// TestBackupsTakenInOneSecondHaveANameEach: NewBackupIn makes a directory
// of its own for each backup, in order, however many share their second.
func TestBackupsTakenInOneSecondHaveANameEach(t *testing.T) {
	t.Parallel()
	into := filepath.Join(t.TempDir(), "backups")
	at := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	var got []string
	for range 3 {
		path, err := stack.NewBackupIn(into, at)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, filepath.Base(path))
	}
	if want := []string{"flotilla-20261204T030000Z", "flotilla-20261204T030000Z-2", "flotilla-20261204T030000Z-3"}; !slices.Equal(got, want) {
		t.Fatalf("three backups in one second: %v, want %v", got, want)
	}
	entries, err := os.ReadDir(into)
	if err != nil || len(entries) != 3 || !slices.IsSortedFunc(entries, func(a, b os.DirEntry) int { return strings.Compare(a.Name(), b.Name()) }) {
		t.Fatalf("the directory of backups: %v %v", entries, err)
	}
	if later, err := stack.NewBackupIn(into, at.Add(time.Second)); err != nil || later <= filepath.Join(into, got[2]) {
		t.Errorf("a backup a second later: %s %v, want a name after %s", later, err, got[2])
	}
}
