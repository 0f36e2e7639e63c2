package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
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
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// runAdmin runs `flotilla admin ARGS...` and returns its combined output.
func runAdmin(args ...string) (string, error) {
	out, err := exec.Command(binary, append([]string{"admin"}, args...)...).CombinedOutput()
	return string(out), err
}

// networkNames lists the networks' names the API returns.
func (f *fleet) networkNames() []string {
	f.t.Helper()
	var names []string
	for _, n := range f.api(200, "GET", "/api/v1/networks?pageSize=500", "")["networks"].([]any) {
		names = append(names, n.(map[string]any)["name"].(string))
	}
	return names
}

// TestABackupTakenWhileUpRunsStartsAsFlotillaStood: `flotilla admin backup`
// copies a running Flotilla while writes go on (each still answered), and
// `flotilla up` on its restore, beside the original, has the records, the
// events and the audit trail of before the backup, nothing of after, and
// takes writes; stopped, the restored one backs up, sealed to a key, and
// restores again with that key alone.
func TestABackupTakenWhileUpRunsStartsAsFlotillaStood(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	before := f.api(200, "POST", "/api/v1/networks", `{"name":"before","provider":"local","httpsStrategy":"self-signed"}`)

	var wrote atomic.Int64
	stop, writing := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(writing)
		for i := 0; i < 400; i++ { // a page of networks holds them all
			select {
			case <-stop:
				return
			default:
			}
			code, out := f.do(t, "POST", "/api/v1/networks", f.token, fmt.Sprintf(`{"name":"during-%d","provider":"local","httpsStrategy":"none"}`, i))
			if code != 200 {
				t.Errorf("a write during the backup: %d %v", code, out)
				return
			}
			wrote.Add(1)
		}
	}()
	backup := filepath.Join(filepath.Dir(f.dir), "backup")
	out, err := runAdmin("backup", backup, "--data-dir", f.dir)
	close(stop)
	<-writing
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	for _, want := range []string{"while flotilla up ran", "the managed PostgreSQL", "stream FLOTILLA_EVENTS", "stream FLOTILLA_AUDIT", "keys/", "flotilla admin restore"} {
		if !strings.Contains(out, want) {
			t.Errorf("the backup's report lacks %q:\n%s", want, out)
		}
	}
	if wrote.Load() == 0 {
		t.Error("no write was answered during the backup")
	}
	f.api(200, "POST", "/api/v1/networks", `{"name":"after","provider":"local","httpsStrategy":"none"}`)
	var m struct {
		Hot      bool
		Database string
		Streams  []struct{ Name string }
	}
	b, err := os.ReadFile(filepath.Join(backup, "backup.json"))
	if err != nil || json.Unmarshal(b, &m) != nil || !m.Hot || m.Database != "managed" || len(m.Streams) == 0 {
		t.Fatalf("backup.json: %v %s", err, b)
	}

	restoredDir := filepath.Join(filepath.Dir(f.dir), "restored")
	if out, err := runAdmin("restore", backup, "--data-dir", restoredDir); err != nil || !strings.Contains(out, "flotilla up --data-dir "+restoredDir) {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	r := &fleet{upProc: startUpFree(t, restoredDir, nil), t: t, dir: restoredDir}
	r.token = r.login(t)
	names := r.networkNames()
	if !contains(names, "before") || contains(names, "after") {
		t.Fatalf("the restored Flotilla's networks: %v (want before, not after)", names)
	}
	// It holds up to the backup's moment: the writes it answered during
	// the backup are there or not, but in order, none after a missing one.
	during := 0
	for contains(names, fmt.Sprintf("during-%d", during)) {
		during++
	}
	t.Logf("%d writes answered during the backup, %d of them in it", wrote.Load(), during)
	if n := len(names) - 1 - during; n != 0 {
		t.Errorf("the restored Flotilla has %d writes of during the backup out of order: %v", n, names)
	}
	// The events agree with the records: a network written after the
	// database's copy has no event in the restored stream, and one whose
	// event the outbox had not yet sent gets it from the restored outbox.
	var missing, phantom []string
	for deadline := time.Now().Add(30 * time.Second); ; {
		created := map[string]bool{}
		for _, e := range r.api(200, "GET", "/api/v1/events?entity=network&limit=1000", "")["events"].([]any) {
			if e := e.(map[string]any); e["type"] == "network.created" {
				created[e["entityId"].(string)] = true
			}
		}
		missing, phantom = nil, nil
		for _, n := range r.api(200, "GET", "/api/v1/networks?pageSize=500", "")["networks"].([]any) {
			id := n.(map[string]any)["id"].(string)
			if !created[id] {
				missing = append(missing, id)
			}
			delete(created, id)
		}
		for id := range created {
			phantom = append(phantom, id)
		}
		if len(missing)+len(phantom) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s, the restored Flotilla has %d networks without their created event and %d created events of networks it does not have: %v %v",
				len(missing), len(phantom), missing[:min(5, len(missing))], phantom[:min(5, len(phantom))])
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The audit trail's projection is made again from the restored stream.
	eventually(t, "the restored audit trail to show the network's creation", func() bool {
		for _, rec := range r.api(200, "GET", "/api/v1/audit?pageSize=500", "")["records"].([]any) {
			if rec := rec.(map[string]any); rec["action"] == "POST /api/v1/networks" && rec["target"] == before["id"] {
				return true
			}
		}
		return false
	})
	r.api(200, "POST", "/api/v1/networks", `{"name":"restored","provider":"local","httpsStrategy":"none"}`)
	r.stop(t)

	// The second backup is sealed to a key made by backup-key: it holds
	// nothing in the clear but its manifest, and only that key opens it.
	keyFile := filepath.Join(filepath.Dir(f.dir), "backup.key")
	recipient, err := exec.Command(binary, "admin", "backup-key", keyFile).Output()
	if err != nil || !bytes.HasPrefix(recipient, []byte("age1pq1")) {
		t.Fatalf("backup-key: %v %q", err, recipient)
	}
	again := filepath.Join(filepath.Dir(f.dir), "backup-again")
	out, err = runAdmin("backup", again, "--data-dir", restoredDir, "--recipient", strings.TrimSpace(string(recipient)))
	if err != nil || !strings.Contains(out, "flotilla up was not running") || !strings.Contains(out, "sealed in backup.tar.zst.age") ||
		!strings.Contains(out, "flotilla admin restore "+again+" --identity KEY --data-dir DIR") {
		t.Fatalf("a sealed backup of a stopped Flotilla: %v\n%s", err, out)
	}
	if entries := must(os.ReadDir(again)); len(entries) != 2 {
		t.Errorf("a sealed backup holds %v: want its manifest and the sealed file alone", entries)
	}
	master := must(os.ReadFile(filepath.Join(restoredDir, "keys", "master.key")))
	if sealed := must(os.ReadFile(filepath.Join(again, "backup.tar.zst.age"))); len(master) < 16 || bytes.Contains(sealed, master[:16]) {
		t.Error("the sealed backup holds the master key in the clear")
	}
	twiceDir := filepath.Join(filepath.Dir(f.dir), "restored-again")
	if out, err := runAdmin("restore", again, "--data-dir", twiceDir); err == nil || !strings.Contains(out, "is sealed to 1 key(s) (age1pq1") || !strings.Contains(out, "give --identity") {
		t.Errorf("restore without its key: %v\n%s", err, out)
	}
	if out, err := runAdmin("verify-backup", again); err != nil || !strings.Contains(out, "its contents were not read (give --identity KEY") {
		t.Errorf("verify-backup without its key: %v\n%s", err, out)
	}
	if _, err := os.Stat(twiceDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a restore refused made %s: %v", twiceDir, err)
	}
	if out, err := runAdmin("verify-backup", again, "--identity", keyFile); err != nil || !strings.Contains(out, "whole: every stream") {
		t.Fatalf("verify-backup of a sealed backup with its key: %v\n%s", err, out)
	}
	if out, err := runAdmin("restore", again, "--data-dir", twiceDir, "--identity", keyFile); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	// A copy cut short is found without the key (its size), and named with it.
	cut := filepath.Join(filepath.Dir(f.dir), "backup-cut")
	if err := os.Mkdir(cut, 0o700); err != nil {
		t.Fatal(err)
	}
	sealedFile := must(os.ReadFile(filepath.Join(again, "backup.tar.zst.age")))
	if err := os.WriteFile(filepath.Join(cut, "backup.tar.zst.age"), sealedFile[:len(sealedFile)-100], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cut, "backup.json"), must(os.ReadFile(filepath.Join(again, "backup.json"))), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runAdmin("verify-backup", cut); err == nil || !strings.Contains(out, "bytes, the manifest says") {
		t.Errorf("verify-backup of a sealed copy cut short, without its key: %v\n%s", err, out)
	}
	if out, err := runAdmin("verify-backup", cut, "--identity", keyFile); err == nil || !strings.Contains(out, "would not restore") {
		t.Errorf("verify-backup of a sealed copy cut short, with its key: %v\n%s", err, out)
	}
	// The manifest in the clear changed (here: its database kind) does not
	// pass for the one sealed inside.
	changed := filepath.Join(filepath.Dir(f.dir), "backup-changed")
	if err := os.Mkdir(changed, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(changed, "backup.tar.zst.age"), sealedFile, 0o600); err != nil {
		t.Fatal(err)
	}
	manifest := strings.Replace(string(must(os.ReadFile(filepath.Join(again, "backup.json")))), `"hot": false`, `"hot": true`, 1)
	if err := os.WriteFile(filepath.Join(changed, "backup.json"), []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runAdmin("verify-backup", changed, "--identity", keyFile); err == nil || !strings.Contains(out, "the manifest was changed") {
		t.Errorf("verify-backup of a sealed backup whose manifest was changed: %v\n%s", err, out)
	}
	r2 := &fleet{upProc: startUpFree(t, twiceDir, nil), t: t, dir: twiceDir}
	r2.token = r2.login(t)
	if names := r2.networkNames(); !contains(names, "before") || !contains(names, "restored") {
		t.Fatalf("the twice-restored Flotilla's networks: %v (want before and restored)", names)
	}

	// verify-backup reads a backup whole, and names what is not.
	if out, err := runAdmin("verify-backup", backup); err != nil || !strings.Contains(out, "whole: every stream, the database and the files read back") {
		t.Fatalf("verify-backup of a whole backup: %v\n%s", err, out)
	}
	events := filepath.Join(backup, "streams", "FLOTILLA_EVENTS.snapshot")
	fi, err := os.Stat(events)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(events, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(backup, "postgres", "PG_VERSION"), 0); err != nil {
		t.Fatal(err)
	}
	out, err = runAdmin("verify-backup", backup)
	if err == nil || !strings.Contains(out, "would not restore") || !strings.Contains(out, "stream FLOTILLA_EVENTS: ") || !strings.Contains(out, "database: pg_verifybackup") {
		t.Errorf("verify-backup of a damaged backup: %v\n%s", err, out)
	}
}

// TestBackupAndRestoreRefuseWhatWouldLoseData: a backup into a directory
// in use or inside the data directory, a restore into a data directory or
// from something that is not a whole backup are refused, saying why, and
// change nothing.
func TestBackupAndRestoreRefuseWhatWouldLoseData(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	if out, err := admin(dir, "admin", "S3cret-pass", "--port", fmt.Sprint(freeBase(t))); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	used := filepath.Join(t.TempDir(), "used")
	if err := os.MkdirAll(used, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(used, "mine"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	partial := t.TempDir()
	if err := os.MkdirAll(filepath.Join(partial, "streams"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", used, "--data-dir", dir}, "exists and is not empty"},
		{[]string{"backup", filepath.Join(dir, "backup"), "--data-dir", dir}, "inside the data directory"},
		{[]string{"backup", filepath.Join(dir, "sealed"), "--data-dir", dir, "--recipient", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}, "inside the data directory"},
		{[]string{"backup", filepath.Join(t.TempDir(), "b"), "--data-dir", filepath.Join(t.TempDir(), "none")}, "no Flotilla data directory"},
		{[]string{"restore", partial, "--data-dir", filepath.Join(t.TempDir(), "new")}, "not a whole one: it has no backup.json"},
		{[]string{"restore", partial, "--data-dir", dir}, "not a whole one"},
		{[]string{"restore", partial}, `"data-dir" not set`},
		{[]string{"backup", filepath.Join(t.TempDir(), "c"), "--env"}, "--creds: is required"},
		{[]string{"backup", filepath.Join(t.TempDir(), "c"), "--env", "--creds", "x.creds"}, "FLOTILLA_DATABASE_OWNER_URL: is required"},
		{[]string{"backup", filepath.Join(t.TempDir(), "c"), "--env", "--data-dir", dir}, "drop --data-dir"},
		{[]string{"backup", filepath.Join(t.TempDir(), "c"), "--creds", "x.creds", "--data-dir", dir}, "--creds is for a cluster's backup"},
		{[]string{"restore", partial, "--env"}, "not a whole one"},
		{[]string{"restore", partial, "--bus-dir", dir, "--data-dir", filepath.Join(t.TempDir(), "new")}, "--bus-dir is for a cluster's restore"},
	} {
		out, err := runAdmin(c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("admin %v: %v, want an error saying %q:\n%s", c.args, err, c.want, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(used, "mine")); err != nil || string(b) != "kept" {
		t.Errorf("the used directory's file: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "backup")); !os.IsNotExist(err) {
		t.Errorf("a refused backup left %s: %v", filepath.Join(dir, "backup"), err)
	}
	// A whole backup is not restored over a data directory. The files
	// the settings name outside the directory are listed, not copied.
	settings := filepath.Join(dir, "config", "settings.json")
	var st map[string]any
	if err := json.Unmarshal(must(os.ReadFile(settings)), &st); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "operator-ca.crt")
	st["caCertFile"], st["caKeyFile"] = outside, filepath.Join(dir, "ca", "ca.key")
	if err := os.WriteFile(settings, must(json.Marshal(st)), 0o600); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "whole")
	out, err := runAdmin("backup", backup, "--data-dir", dir)
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if !strings.Contains(out, outside+"  outside the data directory: not in the backup") || strings.Contains(out, "ca.key  outside") {
		t.Errorf("the backup's report of the files outside:\n%s", out)
	}
	if out, err := runAdmin("restore", backup, "--data-dir", dir); err == nil || !strings.Contains(out, "exists and is not empty: restore into a new one") {
		t.Errorf("restore over a data directory: %v\n%s", err, out)
	}
}

func contains(names []string, name string) bool { return slices.Contains(names, name) }

// eventually polls cond for up to 30 s, failing the test with what it waited for.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30 s for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBackupsIntoADirectoryKeepTheNewest: --into makes each backup in a
// directory of backups and removes the oldest of this data directory's
// beyond --keep, touching nothing else there.
func TestBackupsIntoADirectoryKeepTheNewest(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	if out, err := admin(dir, "admin", "S3cret-pass", "--port", fmt.Sprint(freeBase(t))); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	into := t.TempDir()
	foreign := filepath.Join(into, "flotilla-not-a-backup")
	if err := os.MkdirAll(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	textfile := filepath.Join(t.TempDir(), "flotilla-backup.prom")
	keyFile, recipients := filepath.Join(t.TempDir(), "backup.key"), filepath.Join(t.TempDir(), "backup.recipients")
	if err := exec.Command("sh", "-c", binary+" admin backup-key "+keyFile+" > "+recipients).Run(); err != nil {
		t.Fatal(err)
	}
	var made []string
	for i := range 3 { // in the same second or not: each has a name of its own
		args := []string{"backup", "--into", into, "--keep", "2", "--data-dir", dir, "--textfile", textfile}
		if i == 0 { // a sealed backup is pruned as another
			args = append(args, "--recipients-file", recipients)
		}
		out, err := runAdmin(args...)
		if err != nil {
			t.Fatalf("backup %d: %v\n%s", i, err, out)
		}
		made = append(made, strings.Fields(strings.SplitN(out, " into ", 2)[1])[0])
		if i == 2 && !strings.Contains(out, "removed the old backup "+made[0]) {
			t.Errorf("the third backup's report does not say it removed the first:\n%s", out)
		}
	}
	var left []string
	for _, e := range must(os.ReadDir(into)) {
		left = append(left, filepath.Join(into, e.Name()))
	}
	if want := []string{made[1], made[2], foreign}; !slices.Equal(left, want) {
		t.Fatalf("left in the directory of backups: %v, want %v", left, want)
	}
	// The textfile says when the last backup succeeded; a failure after
	// it adds when it failed, and keeps the success.
	metric := func(name string) float64 {
		t.Helper()
		b, err := os.ReadFile(textfile)
		if err != nil {
			t.Fatal(err)
		}
		prefix := fmt.Sprintf("%s{source=%q} ", name, dir)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, prefix); ok {
				var f float64
				if _, err := fmt.Sscan(v, &f); err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
		t.Fatalf("%s has no %s…:\n%s", textfile, prefix, b)
		return 0
	}
	success := metric("flotilla_backup_last_success_timestamp_seconds")
	if now := float64(time.Now().Unix()); success < now-60 || success > now || metric("flotilla_backup_last_size_bytes") < 1e6 ||
		metric("flotilla_backup_last_duration_seconds") <= 0 || metric("flotilla_backup_last_failure_timestamp_seconds") != 0 {
		b, _ := os.ReadFile(textfile)
		t.Errorf("the textfile after three backups:\n%s", b)
	}
	if out, err := runAdmin("backup", made[1], "--data-dir", dir, "--textfile", textfile); err == nil {
		t.Fatalf("a backup into a directory in use: %s", out)
	}
	// A backup --into that fails leaves no directory of its own there.
	if out, err := runAdmin("backup", "--into", into, "--data-dir", filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(out, "no Flotilla data directory") {
		t.Fatalf("a backup --into of no data directory: %v\n%s", err, out)
	}
	if n := len(must(os.ReadDir(into))); n != 3 {
		t.Errorf("a failed backup --into left %d entries in the directory of backups, want the 3 before it", n)
	}
	if metric("flotilla_backup_last_failure_timestamp_seconds") < success || metric("flotilla_backup_last_success_timestamp_seconds") != success {
		b, _ := os.ReadFile(textfile)
		t.Errorf("the textfile after a failed backup:\n%s", b)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"backup", "--data-dir", dir}, "give DEST (a new directory) or --into DIR"},
		{[]string{"backup", filepath.Join(into, "x"), "--into", into, "--data-dir", dir}, "either DEST or --into DIR, not both"},
		{[]string{"backup", filepath.Join(into, "x"), "--keep", "3", "--data-dir", dir}, "give it with --into DIR"},
		{[]string{"backup", "--into", into, "--keep", "0", "--data-dir", dir}, "--keep: 0: at least 1"},
		{[]string{"backup", "--into", into, "--data-dir", dir, "--recipients-file", keyFile}, "holds a secret key"},
		{[]string{"backup", "--into", into, "--data-dir", dir, "--recipient", "age1nonsense"}, "--recipient age1nonsense: "},
		{[]string{"backup-key", keyFile}, "file exists"},
	} {
		if out, err := runAdmin(c.args...); err == nil || !strings.Contains(out, c.want) {
			t.Errorf("admin %v: %v, want an error saying %q:\n%s", c.args, err, c.want, out)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestABackupOfFlotillaOnAnExternalDatabase: with an external PostgreSQL,
// the backup dumps the database; the restore loads it into the empty
// database --database-url names, which the restored settings name, and up
// starts on it with the records of before the backup.
func TestABackupOfFlotillaOnAnExternalDatabase(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	up := startUpFree(t, dir, []string{"--database-url", testkit.NewDatabase(t)})
	if out, err := admin(dir, "admin", "S3cret-pass"); err != nil {
		t.Fatalf("initial-setup: %v\n%s", err, out)
	}
	f := &fleet{upProc: up, t: t, dir: dir}
	f.token = f.login(t)
	f.api(200, "POST", "/api/v1/networks", `{"name":"before","provider":"local","httpsStrategy":"none"}`)
	backup := filepath.Join(filepath.Dir(dir), "backup")
	out, err := runAdmin("backup", backup, "--data-dir", dir)
	if err != nil || !strings.Contains(out, "database  ") || !strings.Contains(out, "pg_dump") {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	f.api(200, "POST", "/api/v1/networks", `{"name":"after","provider":"local","httpsStrategy":"none"}`)

	restored := filepath.Join(filepath.Dir(dir), "restored")
	if out, err := runAdmin("restore", backup, "--data-dir", restored); err == nil || !strings.Contains(out, "give --database-url") {
		t.Fatalf("a restore of a dump without --database-url: %v\n%s", err, out)
	}
	target := testkit.NewDatabase(t)
	if out, err := runAdmin("restore", backup, "--data-dir", restored, "--database-url", target); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if out, err := runAdmin("restore", backup, "--data-dir", filepath.Join(filepath.Dir(dir), "again"), "--database-url", target); err == nil || !strings.Contains(out, "already holds") {
		t.Fatalf("a restore into a database that holds tables: %v\n%s", err, out)
	}
	r := &fleet{upProc: startUpFree(t, restored, nil), t: t, dir: restored}
	r.token = r.login(t)
	if names := r.networkNames(); !contains(names, "before") || contains(names, "after") {
		t.Fatalf("the restored Flotilla's networks: %v (want before, not after)", names)
	}
	s, err := os.ReadFile(filepath.Join(restored, "config", "settings.json"))
	if err != nil || !strings.Contains(string(s), target) {
		t.Errorf("the restored settings do not name the database restored into: %v\n%s", err, s)
	}
}

// TestMovingFromUpToACluster: a backup of a running flotilla up taken with
// --dump restores into a cluster (restore --env, with a manager's
// settings): its database, its streams and the fleet CA's and master key's
// files; the cluster's inventory then serves the records. And back: the
// cluster's backup restores into a data directory flotilla up serves.
func TestMovingFromUpToACluster(t *testing.T) {
	t.Parallel()
	f := newFleet(t)
	moved := f.api(200, "POST", "/api/v1/networks", `{"name":"moved","provider":"local","httpsStrategy":"none"}`)
	backup := filepath.Join(filepath.Dir(f.dir), "backup")
	if out, err := runAdmin("backup", backup, "--dump", "--data-dir", f.dir); err != nil || !strings.Contains(out, "pg_dump") ||
		!strings.Contains(out, "restore "+backup+" --env --bus-dir DIR") {
		t.Fatalf("backup --dump: %v\n%s", err, out)
	}

	bus, db, files := testkit.SecureNATS(t), testkit.NewDatabase(t), t.TempDir()
	caCert, caKey, kmsKey := filepath.Join(files, "ca.crt"), filepath.Join(files, "ca.key"), filepath.Join(files, "master.key")
	env := append(os.Environ(), "FLOTILLA_NATS_URL="+bus.URL, "FLOTILLA_DATABASE_OWNER_URL="+db,
		"FLOTILLA_CA_CERT_FILE="+caCert, "FLOTILLA_CA_KEY_FILE="+caKey, "FLOTILLA_KMS_KEY_FILE="+kmsKey, "FLOTILLA_STREAM_REPLICAS=1")
	restore := exec.Command(binary, "admin", "restore", backup, "--env", "--bus-dir", bus.Authority().Dir())
	restore.Env = env
	out, err := restore.CombinedOutput()
	if err != nil {
		t.Fatalf("restore --env: %v\n%s", err, out)
	}
	for _, p := range [][2]string{{caCert, "ca/ca.crt"}, {caKey, "ca/ca.key"}, {kmsKey, "keys/master.key"}} {
		if !strings.Contains(string(out), "wrote "+p[0]) {
			t.Errorf("the restore did not say it wrote %s:\n%s", p[0], out)
		}
		if a, b := must(os.ReadFile(p[0])), must(os.ReadFile(filepath.Join(f.dir, p[1]))); !bytes.Equal(a, b) {
			t.Errorf("%s is not the data directory's %s", p[0], p[1])
		}
	}
	stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.Inventory, subjects.CA, subjects.Secrets},
		DatabaseURL: db, CACertFile: caCert, CAKeyFile: caKey, KMSKeyFile: kmsKey}, bus))
	gw := rpc.NewClient(bus.Conn(t, subjects.Gateway), subjects.Gateway, 0)
	got, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: moved["id"].(string)}, rpc.As(vocab.User("admin")))
	if err != nil || got.GetName() != "moved" {
		t.Fatalf("the network in the cluster: %v %v", got, err)
	}
	js, err := jetstream.New(bus.Conn(t, busauth.Observer))
	if err != nil {
		t.Fatal(err)
	}
	events, err := js.Stream(t.Context(), subjects.EventsStream)
	if err == nil {
		_, err = events.GetLastMsgForSubject(t.Context(), subjects.Event(subjects.NounNetwork, moved["id"].(string), string(vocab.VerbCreated)))
	}
	if err != nil {
		t.Fatalf("the network's event in the cluster: %v", err)
	}

	// And back: the cluster's backup restores into a new data directory
	// (its settings new, its CA and master key the cluster's), on which
	// flotilla up starts with what the cluster held and the admin's login.
	if _, err := rpc.Call(t.Context(), gw, endpoints.NetworkCreate, &inventoryv1.CreateNetworkRequest{
		Network: &inventoryv1.Network{Name: "in-the-cluster", Provider: "local", HttpsStrategy: "none"}}, rpc.As(vocab.User("admin"))); err != nil {
		t.Fatal(err)
	}
	clusterBackup := filepath.Join(filepath.Dir(f.dir), "cluster-backup")
	backupCluster := exec.Command(binary, "admin", "backup", clusterBackup, "--env", "--creds", bus.Creds[busauth.Backup])
	backupCluster.Env = env
	if out, err := backupCluster.CombinedOutput(); err != nil {
		t.Fatalf("backup --env: %v\n%s", err, out)
	}
	home := filepath.Join(filepath.Dir(f.dir), "home-again")
	if out, err := runAdmin("restore", clusterBackup, "--data-dir", home); err != nil || !strings.Contains(out, "flotilla up --data-dir "+home) {
		t.Fatalf("a cluster's backup restored into a data directory: %v\n%s", err, out)
	}
	if a, b := must(os.ReadFile(caCert)), must(os.ReadFile(filepath.Join(home, "ca", "ca.crt"))); !bytes.Equal(a, b) {
		t.Error("the data directory's CA is not the cluster's")
	}
	r := &fleet{upProc: startUpFree(t, home, nil), t: t, dir: home}
	r.token = r.login(t)
	if names := r.networkNames(); !contains(names, "moved") || !contains(names, "in-the-cluster") {
		t.Fatalf("the networks of the data directory restored from the cluster: %v", names)
	}
}
