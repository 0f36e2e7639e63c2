package jsbackup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/jsbackup"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestACopyIsAStoreANewServerStartsOn: the streams copied while the server
// runs (several chunks each, more messages written during the copy) are
// found, whole and as they were at their snapshot, by a server started on
// the copy, the durable consumers with them, where they were.
func TestACopyIsAStoreANewServerStartsOn(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nb, src := flotillaStreams(t)
	body := bytes.Repeat([]byte("x"), 1000)
	const events = 3000 // about 3 MB: many 128 KB chunks, each acknowledged
	for i := range events {
		if _, err := src.PublishAsync(subjects.Event(subjects.NounNetwork, fmt.Sprintf("n-%d", i), "created"), body); err != nil {
			t.Fatal(err)
		}
	}
	<-src.PublishAsyncComplete()
	kv, err := src.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "certs"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "i-1", []byte("serials")); err != nil {
		t.Fatal(err)
	}
	// A durable consumer that has read and acknowledged 100 events.
	readAndAck(t, src, 100)
	// Writes go on during the copy.
	stop := make(chan struct{})
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = src.Publish(ctx, subjects.Event(subjects.NounNetwork, fmt.Sprintf("later-%d", i), "created"), body)
		}
	}()

	dir := t.TempDir()
	copied, err := copyAll(t, nb.Conn(t, busauth.Backup), dir)
	close(stop)
	<-writing
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]jsbackup.Stream{}
	for _, s := range copied {
		want[s.Name] = s
	}
	ev, ok := want[subjects.EventsStream]
	if !ok || ev.Messages < events || ev.FirstSeq != 1 || ev.LastSeq != ev.Messages || ev.Bytes == 0 || ev.LastTime.IsZero() {
		t.Fatalf("copied %+v", copied)
	}
	if _, ok := want["KV_certs"]; !ok {
		t.Fatalf("the bucket was not copied: %+v", copied)
	}

	restorer, js := emptyServer(t, nb)
	again, err := jsbackup.Send(ctx, restorer, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(copied) {
		t.Fatalf("restored %+v, copied %+v", again, copied)
	}
	for name, w := range want {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s on the copy: %v", name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != w.Messages || info.State.LastSeq != w.LastSeq {
			t.Errorf("stream %s on the copy: %d messages up to %d, want %d up to %d (its snapshot)", name, info.State.Msgs, info.State.LastSeq, w.Messages, w.LastSeq)
		}
		if want := map[string]int{subjects.EventsStream: 1}[name]; info.State.Consumers != want {
			t.Errorf("stream %s on the copy has %d consumers, want %d", name, info.State.Consumers, want)
		}
	}
	// The consumer goes on where it was.
	cons, err := js.Consumer(ctx, subjects.EventsStream, "reader")
	if err != nil {
		t.Fatal(err)
	}
	if ci, err := cons.Info(ctx); err != nil || ci.AckFloor.Stream != 100 || ci.NumPending != ev.Messages-100 {
		t.Errorf("the consumer on the copy: %+v %v, want it acknowledged up to 100", ci, err)
	}
	s, _ := js.Stream(ctx, subjects.EventsStream)
	m, err := s.GetMsg(ctx, events)
	if err != nil || !bytes.Equal(m.Data, body) || !strings.HasSuffix(m.Subject, fmt.Sprintf("n-%d.created", events-1)) {
		t.Fatalf("message %d on the copy: %v %v", events, m, err)
	}
	certs, _ := js.Stream(ctx, "KV_certs")
	if m, err := certs.GetLastMsgForSubject(ctx, "$KV.certs.i-1"); err != nil || string(m.Data) != "serials" {
		t.Fatalf("the bucket's key on the copy: %v %v", m, err)
	}
}

// TestACopyOverwritesNothing: a stream whose files are already in the
// target is refused, and they are left as they were.
func TestACopyOverwritesNothing(t *testing.T) {
	t.Parallel()
	nb, _ := flotillaStreams(t)
	dir := t.TempDir()
	existing := filepath.Join(dir, subjects.EventsStream+".json")
	if err := os.WriteFile(existing, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := copyAll(t, nb.Conn(t, busauth.Backup), dir)
	if err == nil || !strings.Contains(err.Error(), subjects.EventsStream) {
		t.Fatalf("copy onto an existing stream: %v", err)
	}
	if b, err := os.ReadFile(existing); err != nil || string(b) != "kept" {
		t.Fatalf("the existing file: %q %v", b, err)
	}
}

// TestATruncatedSnapshotIsNotRestored: a snapshot file cut short (a disk
// that filled up, a copy stopped midway) is refused, naming the file, and
// the stream is not created.
func TestATruncatedSnapshotIsNotRestored(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nb, src := flotillaStreams(t)
	for i := range 500 {
		if _, err := src.Publish(ctx, subjects.Event(subjects.NounNetwork, fmt.Sprintf("n-%d", i), "created"), bytes.Repeat([]byte{byte(i)}, 500)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	if _, err := copyAll(t, nb.Conn(t, busauth.Backup), dir); err != nil {
		t.Fatal(err)
	}
	for _, e := range must(os.ReadDir(dir)) {
		if e.Name() != subjects.EventsStream+".json" && e.Name() != subjects.EventsStream+".snapshot" {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	path := filepath.Join(dir, subjects.EventsStream+".snapshot")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	restorer, js := emptyServer(t, nb)
	_, err = jsbackup.Send(ctx, restorer, dir, 0)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("restore of a truncated snapshot: %v", err)
	}
	if _, err := js.Stream(ctx, subjects.EventsStream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the stream of a truncated snapshot: %v", err)
	}
}

// flotillaStreams starts a bus with Flotilla's streams.
func flotillaStreams(t *testing.T) (*testkit.Bus, jetstream.JetStream) {
	t.Helper()
	nb := testkit.SecureNATS(t)
	js, err := jetstream.New(nb.Unrestricted(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(t.Context(), js, 1); err != nil {
		t.Fatal(err)
	}
	return nb, js
}

// emptyServer starts a server trusting nb's authority, with an empty
// store: a restorer's connection to restore into it, and the observer's
// view.
func emptyServer(t *testing.T, nb *testkit.Bus) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := &server.Options{JetStream: true, StoreDir: t.TempDir()}
	if err := nb.Authority().Configure(opts); err != nil {
		t.Fatal(err)
	}
	ns := testkit.Serve(t, opts)
	restorer := testkit.NATSConn(t, ns, busauth.ConnectOptions(busauth.Restorer, mint(t, nb.Authority(), busauth.Restorer, busauth.RestorerPermissions()))...)
	js, err := jetstream.New(testkit.NATSConn(t, ns, busauth.ConnectOptions(busauth.Observer, nb.Creds[busauth.Observer])...))
	if err != nil {
		t.Fatal(err)
	}
	return restorer, js
}

// mint writes the credentials of a user auth signs with perms, and
// returns their file.
func mint(t *testing.T, auth *busauth.Authority, name string, perms jwt.Permissions) string {
	t.Helper()
	b, err := auth.Mint(name, perms)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readAndAck has a durable consumer "reader" of the events stream read
// and acknowledge n events.
func readAndAck(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	reader, err := js.CreateOrUpdateConsumer(t.Context(), subjects.EventsStream, jetstream.ConsumerConfig{Durable: "reader", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := reader.Fetch(n)
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// copyAll copies every stream nc sees into dir.
func copyAll(t *testing.T, nc *nats.Conn, dir string) ([]jsbackup.Stream, error) {
	t.Helper()
	names, err := jsbackup.Names(t.Context(), nc)
	if err != nil {
		t.Fatal(err)
	}
	return jsbackup.Copy(t.Context(), nc, dir, names...)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestTheBackupIdentitySnapshotsAndNothingElse: the backup identity can
// neither publish into a stream, read a message, nor take a consumer.
func TestTheBackupIdentitySnapshotsAndNothingElse(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	nb, _ := flotillaStreams(t)
	nc, v := nb.Watch(t, busauth.Backup)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	event := subjects.Event(subjects.NounNetwork, "n-1", "created")
	if err := nc.Publish(event, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := js.Stream(short, subjects.EventsStream); err == nil {
		t.Error("the backup identity read a stream's information")
	}
	v.Settle(t)
	for _, subject := range []string{event, "$JS.API.STREAM.INFO." + subjects.EventsStream} {
		if !v.PublishRefused(subject) {
			t.Errorf("the backup identity published to %s", subject)
		}
	}
}

// TestStreamsCopiedFromAClusterAreSentToAnother: the streams of a cluster
// of three (one replica each, as a data directory's) copied by the backup
// identity are created in another cluster of three through the JetStream
// API, by a user that may do nothing but that, with their messages and
// three replicas.
func TestStreamsCopiedFromAClusterAreSentToAnother(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	auth, err := busauth.LoadOrCreate(filepath.Join(t.TempDir(), "bus"))
	if err != nil {
		t.Fatal(err)
	}
	cluster := func() []*server.Server {
		return testkit.JetStreamCluster(t, 3, func(opts *server.Options) {
			if err := auth.Configure(opts); err != nil {
				t.Fatal(err)
			}
		})
	}
	connect := func(servers []*server.Server, identity, creds string) *nats.Conn {
		return testkit.NATSConn(t, servers[0], busauth.ConnectOptions(identity, creds)...)
	}
	admin := mint(t, auth, "admin", jwt.Permissions{})

	a := cluster()
	src, err := jetstream.New(connect(a, "admin", admin))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if _, err := src.Publish(ctx, subjects.Event(subjects.NounNetwork, fmt.Sprintf("n-%d", i), "created"), bytes.Repeat([]byte{'a' + byte(i%26)}, 2000)); err != nil {
			t.Fatal(err)
		}
	}
	// A durable consumer, replicated, that has acknowledged 100 events.
	readAndAck(t, src, 100)
	dir := t.TempDir()
	copied, err := copyAll(t, connect(a, busauth.Backup, auth.Creds(busauth.Backup)), dir)
	if err != nil {
		t.Fatal(err)
	}

	b := cluster()
	testkit.WaitFor(t, 30*time.Second, "the other cluster's meta leader", func() bool {
		return slices.ContainsFunc(b, (*server.Server).JetStreamIsLeader)
	})
	// A leader elected, the account's JetStream may still be coming up on
	// the server the restorer reaches ("JetStream not enabled for account").
	bjs, err := jetstream.New(connect(b, "admin", admin))
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "JetStream for the account in the other cluster", func() bool {
		_, err := bjs.AccountInfo(ctx)
		return err == nil
	})
	sent, err := jsbackup.Send(ctx, connect(b, busauth.Restorer, mint(t, auth, busauth.Restorer, busauth.RestorerPermissions())), dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != len(copied) {
		t.Fatalf("sent %d streams, copied %d", len(sent), len(copied))
	}
	dst, err := jetstream.New(connect(b, "admin", admin))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range copied {
		s, err := dst.Stream(ctx, c.Name)
		if err != nil {
			t.Fatalf("stream %s in the other cluster: %v", c.Name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != c.Messages || info.State.LastSeq != c.LastSeq || info.Config.Replicas != 3 {
			t.Errorf("stream %s in the other cluster: %d messages up to %d on %d replicas, want %d up to %d on 3",
				c.Name, info.State.Msgs, info.State.LastSeq, info.Config.Replicas, c.Messages, c.LastSeq)
		}
	}
	if cons, err := dst.Consumer(ctx, subjects.EventsStream, "reader"); err != nil {
		t.Errorf("the consumer in the other cluster: %v", err)
	} else if ci, err := cons.Info(ctx); err != nil || ci.AckFloor.Stream != 100 {
		t.Errorf("the consumer in the other cluster: %+v %v, want it acknowledged up to 100", ci, err)
	}
	events, _ := dst.Stream(ctx, subjects.EventsStream)
	if m, err := events.GetMsg(ctx, 300); err != nil || !bytes.Equal(m.Data, bytes.Repeat([]byte{'a' + 299%26}, 2000)) {
		t.Fatalf("the last event in the other cluster: %v", err)
	}
	// A stream there is not put back twice, nor deleted by the refused
	// restore's undoing.
	if _, err := jsbackup.Send(ctx, connect(b, busauth.Restorer, mint(t, auth, busauth.Restorer, busauth.RestorerPermissions())), dir, 3); err == nil {
		t.Error("streams that exist were restored over")
	}
	for _, c := range copied {
		if _, err := dst.Stream(ctx, c.Name); err != nil {
			t.Errorf("stream %s after a restore refused over it: %v", c.Name, err)
		}
	}
}
