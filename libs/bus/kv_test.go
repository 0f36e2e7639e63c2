package bus_test

import (
	"context"
	"errors"
	"fmt"
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

// TestGetLatestManyReadsEveryKeyInTwoRequests: GetLatestMany answers what
// GetLatest answers for each key (deleted, purged and never-written keys
// absent) with one request to the stream leader and one batched direct
// get, and a batched answer from a replica behind the leader does not
// count.
func TestGetLatestManyReadsEveryKeyInTwoRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testkit.NATS(t)
	js, err := jetstream.New(testkit.NATSConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "many", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := bus.GetLatestMany(ctx, js, "many", []string{"a", "b"}); err != nil || len(got) != 0 {
		t.Fatalf("an empty bucket: %v, %v; want nothing", got, err)
	}
	want := map[string]bus.Entry{}
	for i := range 300 { // more than one batch of checks, each written twice
		k := fmt.Sprintf("k%d", i)
		if _, err := kv.Put(ctx, k, []byte("old")); err != nil {
			t.Fatal(err)
		}
		v := fmt.Sprintf("v%d", i)
		rev, err := kv.Put(ctx, k, []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		want[k] = bus.Entry{Value: []byte(v), Revision: rev}
	}
	for _, k := range []string{"deleted", "purged"} {
		if _, err := kv.Put(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "purged"); err != nil { // the bucket's last message: a marker
		t.Fatal(err)
	}
	keys := []string{"deleted", "purged", "never-written"}
	for k := range want {
		keys = append(keys, k)
	}

	watch := testkit.NATSConn(t, srv)
	direct, err := watch.SubscribeSync("$JS.API.DIRECT.GET.KV_many")
	if err != nil {
		t.Fatal(err)
	}
	leader, err := watch.SubscribeSync("$JS.API.STREAM.INFO.KV_many")
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	got, err := bus.GetLatestMany(ctx, js, "many", keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%d keys read, want %d", len(got), len(want))
	}
	for k, w := range want {
		if g := got[k]; string(g.Value) != string(w.Value) || g.Revision != w.Revision {
			t.Errorf("%s: %q at %d, want %q at %d", k, g.Value, g.Revision, w.Value, w.Revision)
		}
	}
	for _, sub := range []*nats.Subscription{leader, direct} {
		if _, err := sub.NextMsg(time.Second); err != nil {
			t.Fatalf("no request to %s: %v", sub.Subject, err)
		}
		if _, err := sub.NextMsg(100 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
			t.Errorf("a second request to %s: %v", sub.Subject, err)
		}
	}

	// An answer from a replica that had not reached the leader's last
	// sequence does not count; one that had does.
	last, err := js.Stream(ctx, "KV_many")
	if err != nil {
		t.Fatal(err)
	}
	seq := last.CachedInfo().State.LastSeq
	if _, ok := bus.GetManySynced(ctx, js, "many", keys, seq+1); ok {
		t.Error("an answer behind the leader's sequence counted")
	}
	if g, ok := bus.GetManySynced(ctx, js, "many", keys, seq); !ok || len(g) != len(want) {
		t.Errorf("an answer at the leader's sequence: %d keys, counted %v", len(g), ok)
	}
}
