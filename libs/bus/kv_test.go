package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/testkit"
)

// TestGetLatestAsksTheLeader: GetLatest answers a key's value and revision
// as the last write left them (a deleted or purged key, or one never
// written, is not found), and asks the stream's leader for it, never with
// a direct get that any replica, perhaps one behind, may answer.
func TestGetLatestAsksTheLeader(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testkit.NATS(t)
	js, err := jetstream.New(testkit.NATSConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "latest", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	watch := testkit.NATSConn(t, srv)
	direct, err := watch.SubscribeSync("$JS.API.DIRECT.GET.>")
	if err != nil {
		t.Fatal(err)
	}
	asked, err := watch.SubscribeSync("$JS.API.STREAM.MSG.GET.KV_latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "a", []byte("one")); err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "a", []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	if v, r, err := bus.GetLatest(ctx, js, "latest", "a"); err != nil || string(v) != "two" || r != rev {
		t.Fatalf("a key written twice: %q at %d, %v; want \"two\" at %d", v, r, err, rev)
	}
	if _, _, err := bus.GetLatest(ctx, js, "latest", "never-written"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("a key never written: %v; want not found", err)
	}
	for what, remove := range map[string]func(string) error{
		"deleted": func(k string) error { return kv.Delete(ctx, k) },
		"purged":  func(k string) error { return kv.Purge(ctx, k) },
	} {
		if _, err := kv.Put(ctx, what, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := remove(what); err != nil {
			t.Fatal(err)
		}
		if _, _, err := bus.GetLatest(ctx, js, "latest", what); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("a key %s: %v; want not found", what, err)
		}
	}
	if _, _, err := bus.GetLatest(ctx, js, "no-such-bucket", "a"); err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("a bucket that does not exist: %v; want an error other than not found", err)
	}
	if m, err := asked.NextMsg(time.Second); err != nil || m == nil {
		t.Fatalf("GetLatest did not ask STREAM.MSG.GET: %v", err)
	}
	if m, err := direct.NextMsg(100 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("GetLatest asked with a direct get (%v): %v", m.Subject, err)
	}
}
