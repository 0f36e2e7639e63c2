package ca

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/testkit"
)

// Two joins that both read the token before either consumes it: only the
// first consume wins, whatever the timing of the requests around it.
func TestConsumeWinsOnceForOneRevision(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := newJoinTokens(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newJoinTokens(ctx, js, 1); err != nil {
		t.Fatalf("declaring the bucket again: %v", err)
	}
	token, err := tokens.create(ctx, "i-1", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	a, err := tokens.lookup(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tokens.lookup(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := tokens.consume(ctx, a); err != nil {
		t.Fatalf("first consume: %v", err)
	}
	if err := tokens.consume(ctx, b); err != errBadToken {
		t.Fatalf("second consume: %v; want errBadToken", err)
	}
	if _, err := tokens.lookup(ctx, token); err != errBadToken {
		t.Fatalf("lookup after consume: %v; want errBadToken", err)
	}

	// Only the digest is stored.
	keys, err := tokens.kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		t.Errorf("key %s left after consume", k)
	}
	st, err := tokens.kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 || st.TTL() != MaxJoinTokenTTL {
		t.Errorf("bucket history %d, TTL %v; want 1 and %v", st.History(), st.TTL(), MaxJoinTokenTTL)
	}
}

func TestTokenStoredOnlyAsDigest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	js, err := jetstream.New(testkit.NATSConn(t, testkit.NATS(t)))
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := newJoinTokens(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	token, err := tokens.create(ctx, "i-2", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	e, err := tokens.kv.Get(ctx, tokenKey(token))
	if err != nil {
		t.Fatalf("no entry under the token's digest: %v", err)
	}
	if got := string(e.Value()); got == "" || strings.Contains(got, token[len(JoinTokenPrefix):]) {
		t.Errorf("stored value %q holds the token", got)
	}
}
