package busauth_test

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
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

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/testkit"
)

// callSubjects is every subject a request can go to: each endpoint under
// each identity's name (a per-instance endpoint bound to one instance).
func callSubjects() map[string]endpoints.Info {
	out := map[string]endpoints.Info{}
	for _, ep := range endpoints.All() {
		if ep.PerInstance() {
			ep.Subject = strings.Replace(ep.Subject, "*", "i-1", 1)
		}
		for _, id := range busauth.Identities() {
			out[ep.CallSubject(id)] = ep
		}
	}
	return out
}

// tryPublish publishes to each subject as identity and returns what the
// server refused, once it has answered all.
func tryPublish(t *testing.T, bus *testkit.Bus, identity string, subjects []string) *testkit.Violations {
	t.Helper()
	nc, v := bus.Watch(t, identity)
	for _, s := range subjects {
		if err := nc.Publish(s, nil); err != nil {
			t.Fatal(err)
		}
	}
	v.Settle(t)
	return v
}

// TestOnlyDeclaredCallersMayCallAnEndpoint publishes, as every identity, to
// every endpoint under every identity's name: the server refuses all but an
// identity calling an endpoint it is declared for, under its own name.
func TestOnlyDeclaredCallersMayCallAnEndpoint(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	calls := callSubjects()
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			v := tryPublish(t, bus, id, slices.Collect(maps.Keys(calls)))
			for subject, ep := range calls {
				allowed := ep.CalledBy(id) && strings.HasSuffix(subject, "."+id)
				if refused := v.PublishRefused(subject); refused == allowed {
					t.Errorf("%s publishing to %s: refused=%v, want refused=%v", id, subject, refused, !allowed)
				}
			}
		})
	}
}

// TestOnlyTheAnsweringServiceHearsRequests subscribes, as every identity,
// to every endpoint: only the service that answers it may.
func TestOnlyTheAnsweringServiceHearsRequests(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			nc, v := bus.Watch(t, id)
			for _, ep := range endpoints.All() {
				if _, err := nc.SubscribeSync(ep.ServeSubject()); err != nil {
					t.Fatal(err)
				}
			}
			v.Settle(t)
			for _, ep := range endpoints.All() {
				if refused, allowed := v.SubscribeRefused(ep.ServeSubject()), ep.Service == id; refused == allowed {
					t.Errorf("%s subscribing to %s: refused=%v, want refused=%v", id, ep.ServeSubject(), refused, !allowed)
				}
			}
		})
	}
}

// TestOnlyDeclaredWatchersFollowASubjectLive: a watched subject (revoked
// tokens) may be subscribed to by the services that declare the watch
// (and the observer, which reads every stream) and nobody else; a watcher
// gets no other subject of the stream.
func TestOnlyDeclaredWatchersFollowASubjectLive(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	others := []string{subjects.Audit(subjects.NounUser, "u-1", subjects.VerbLoginFailed), subjects.Audit(subjects.NounSecret, "i-1", subjects.VerbRead)}
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			nc, v := bus.Watch(t, id)
			var watched []string
			for _, w := range endpoints.Watches {
				watched = append(watched, w.Subjects...)
			}
			for _, s := range append(slices.Clone(watched), others...) {
				if _, err := nc.SubscribeSync(s); err != nil {
					t.Fatal(err)
				}
			}
			v.Settle(t)
			for _, w := range endpoints.Watches {
				for _, s := range w.Subjects {
					if refused, allowed := v.SubscribeRefused(s), w.Service == id; refused == allowed {
						t.Errorf("%s subscribing to %s: refused=%v, want refused=%v", id, s, refused, !allowed)
					}
				}
			}
			for _, s := range others {
				if !v.SubscribeRefused(s) {
					t.Errorf("%s may subscribe to %s", id, s)
				}
			}
		})
	}
}

// TestOnlyItsServicesUseAKeyValueBucket: each key-value bucket is written,
// declared and read only by the services declared for it (the observer
// reads them all): the CA's join tokens and agent certificates, the
// provisioners' leases, the managers' heartbeats.
func TestOnlyItsServicesUseAKeyValueBucket(t *testing.T) {
	t.Parallel()
	var buckets []endpoints.StreamUse
	for _, u := range endpoints.Streams {
		if strings.HasPrefix(u.Stream, "KV_") {
			buckets = append(buckets, u)
		}
	}
	leases := subjects.KVStream(subjects.ProvisionerLeasesBucket)
	if i := slices.IndexFunc(buckets, func(u endpoints.StreamUse) bool { return u.Stream == leases }); i < 0 ||
		fmt.Sprint(buckets[i].Publishers, buckets[i].Readers) != fmt.Sprintf("[{provisioner [%s]}] [provisioner]", subjects.KVAll(subjects.ProvisionerLeasesBucket)) {
		t.Fatalf("the lease bucket is not the provisioner's alone: %v", buckets)
	}
	bus := testkit.SecureNATS(t)
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			nc, v := bus.Watch(t, id)
			type probe struct {
				subject string
				allowed bool
			}
			var probes []probe
			for _, u := range buckets {
				key := "$KV." + strings.TrimPrefix(u.Stream, "KV_") + ".i-1"
				if u.Stream == subjects.KVStream(subjects.ManagersBucket) {
					// A service writes only its own processes' heartbeats
					// (TestEachServiceWritesOnlyItsOwnHeartbeats).
					key = "$KV." + subjects.ManagersBucket + "." + subjects.ManagerKey(id, "host-1", "p-1")
				}
				writes := u.PublishedBy(id)
				probes = append(probes,
					probe{key, writes},
					probe{"$JS.API.STREAM.CREATE." + u.Stream, writes},
					probe{"$JS.API.DIRECT.GET." + u.Stream + "." + key, u.ReadBy(id) || id == busauth.Observer})
			}
			for _, p := range probes {
				if err := nc.Publish(p.subject, nil); err != nil {
					t.Fatal(err)
				}
			}
			v.Settle(t)
			for _, p := range probes {
				if refused := v.PublishRefused(p.subject); refused == p.allowed {
					t.Errorf("%s publishing to %s: refused=%v, want refused=%v", id, p.subject, refused, !p.allowed)
				}
			}
		})
	}
}

// TestNobodyMayListenEverywhereOrDestroyStreams: no identity may subscribe
// to everything, to the default inbox or another identity's inbox, or
// delete a stream, its messages or a durable consumer, or purge a stream —
// but the agent gateway the agent-log stream (per-instance log retention),
// which TestOnlyTheAgentGatewayPurgesAndOnlyAgentLogs covers.
func TestNobodyMayListenEverywhereOrDestroyStreams(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			nc, v := bus.Watch(t, id)
			subs := []string{">", "_INBOX.>", "$JS.>", "flotilla.>"}
			for _, other := range busauth.Identities() {
				if other != id {
					subs = append(subs, busauth.InboxPrefix(other)+".>")
				}
			}
			var pubs []string
			for _, u := range endpoints.Streams {
				pubs = append(pubs, "$JS.API.STREAM.DELETE."+u.Stream, "$JS.API.STREAM.MSG.DELETE."+u.Stream)
				if !u.PurgedBy(id) {
					pubs = append(pubs, "$JS.API.STREAM.PURGE."+u.Stream)
				}
				for _, c := range u.Consumers {
					pubs = append(pubs, "$JS.API.CONSUMER.DELETE."+u.Stream+"."+c.Durable)
				}
			}
			for _, s := range subs {
				if _, err := nc.SubscribeSync(s); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range pubs {
				if err := nc.Publish(p, nil); err != nil {
					t.Fatal(err)
				}
			}
			v.Settle(t)
			for _, s := range subs {
				if !v.SubscribeRefused(s) {
					t.Errorf("%s may subscribe to %s", id, s)
				}
			}
			for _, p := range pubs {
				if !v.PublishRefused(p) {
					t.Errorf("%s may publish to %s", id, p)
				}
			}
		})
	}
}

// TestOnlyTheAgentGatewayPurgesAndOnlyAgentLogs: purging is granted to one
// identity for one stream, and that identity still deletes nothing: no
// stream (not even the one it purges), no message, and purges no other
// stream, also one nobody declared.
func TestOnlyTheAgentGatewayPurgesAndOnlyAgentLogs(t *testing.T) {
	t.Parallel()
	var purgers []string
	for _, u := range endpoints.Streams {
		for _, p := range u.Purgers {
			purgers = append(purgers, p+" "+u.Stream)
		}
	}
	if fmt.Sprint(purgers) != "[agentgw FLOTILLA_AGENT_LOGS]" {
		t.Fatalf("purgers %v, want only the agent gateway on the agent-log stream", purgers)
	}
	bus := testkit.SecureNATS(t)
	nc, v := bus.Watch(t, subjects.AgentGW)
	allowed := "$JS.API.STREAM.PURGE." + subjects.AgentLogsStream
	refused := []string{"$JS.API.STREAM.PURGE.SOMEONE_ELSES", "$JS.API.STREAM.DELETE." + subjects.AgentLogsStream,
		"$JS.API.STREAM.MSG.DELETE." + subjects.AgentLogsStream}
	for _, u := range endpoints.Streams {
		if u.Stream != subjects.AgentLogsStream {
			refused = append(refused, "$JS.API.STREAM.PURGE."+u.Stream)
		}
	}
	for _, p := range append(refused, allowed) {
		if err := nc.Publish(p, nil); err != nil {
			t.Fatal(err)
		}
	}
	v.Settle(t)
	for _, p := range refused {
		if !v.PublishRefused(p) {
			t.Errorf("the agent gateway may publish to %s", p)
		}
	}
	if v.PublishRefused(allowed) {
		t.Errorf("the agent gateway may not purge %s: it cannot enforce log retention", subjects.AgentLogsStream)
	}
}

// TestTheObserverReadsAndNothingElse: the observer lists and replays the
// streams and watches agent status, and can publish into no stream.
func TestTheObserverReadsAndNothingElse(t *testing.T) {
	t.Parallel()
	nb := testkit.SecureNATS(t)
	ctx := t.Context()
	admin, err := jetstream.New(nb.Unrestricted(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, admin, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Publish(ctx, subjects.Event(subjects.NounNetwork, "n-1", "created"), []byte("x")); err != nil {
		t.Fatal(err)
	}

	nc, v := nb.Watch(t, busauth.Observer)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range js.StreamNames(ctx).Name() {
		names = append(names, n)
	}
	if !slices.Contains(names, subjects.EventsStream) {
		t.Fatalf("observer lists streams %v", names)
	}
	s, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil || string(m.Data()) != "x" {
		t.Fatalf("observer replay: %v %v", m, err)
	}
	if _, err := s.GetMsg(ctx, 1); err != nil {
		t.Fatalf("observer get: %v", err)
	}
	for _, subject := range []string{subjects.Event(subjects.NounNetwork, "n-2", "created"), subjects.Provision("i-1"),
		subjects.AgentLogs("i-1"), subjects.Audit(subjects.NounSecret, "i-1", subjects.VerbRead)} {
		if err := nc.Publish(subject, []byte("forged")); err != nil {
			t.Fatal(err)
		}
	}
	// A durable consumer is not the observer's to take over.
	_, err = s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: subjects.SecretsCleanupConsumer})
	if err == nil {
		t.Error("the observer created or changed a service's durable consumer")
	}
	v.Settle(t)
	for _, subject := range []string{subjects.Event(subjects.NounNetwork, "n-2", "created"), subjects.Provision("i-1")} {
		if !v.PublishRefused(subject) {
			t.Errorf("the observer published to %s", subject)
		}
	}
}

// TestRotationRevokesTheOldCredentials: after Rotate, a server that has
// the new account JWT refuses the old credentials and takes the new ones.
func TestRotationRevokesTheOldCredentials(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "bus")
	auth, err := busauth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range busauth.Identities() {
		fi, err := os.Stat(auth.Creds(id))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s credentials: %v %v", id, fi, err)
		}
	}
	old := filepath.Join(t.TempDir(), "old.creds")
	data, _ := os.ReadFile(auth.Creds(subjects.Gateway))
	if err := os.WriteFile(old, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := auth.Rotate(subjects.Gateway); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the revocation covers keys issued before it
	// A restarted server (or a reloaded one) reads the authority again.
	again, err := busauth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts := &server.Options{}
	if err := again.Configure(opts); err != nil {
		t.Fatal(err)
	}
	ns := testkit.Serve(t, opts)
	if nc, err := nats.Connect(ns.ClientURL(), nats.UserCredentials(old)); err == nil {
		nc.Close()
		t.Fatal("the rotated-out credentials still connect")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(err.Error(), "Authorization") {
		t.Logf("old credentials refused: %v", err)
	}
	nc, err := nats.Connect(ns.ClientURL(), busauth.ConnectOptions(subjects.Gateway, again.Creds(subjects.Gateway))...)
	if err != nil {
		t.Fatalf("new credentials: %v", err)
	}
	nc.Close()
	if cfg, err := again.ServerConfig(); err != nil || !strings.Contains(cfg, "resolver_preload") || !strings.Contains(cfg, "operator: ") {
		t.Fatalf("server config: %v\n%s", err, cfg)
	}
}

// TestCredentialsFitTheProtocolLine: a connection sends its user JWT in one
// CONNECT line, so every identity's must fit, with room for the endpoints
// still to come, in the line length the authority configures.
func TestCredentialsFitTheProtocolLine(t *testing.T) {
	t.Parallel()
	a, err := busauth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range busauth.Identities() {
		b, err := os.ReadFile(a.Creds(id))
		if err != nil {
			t.Fatal(err)
		}
		token, err := jwt.ParseDecoratedJWT(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(token) > busauth.MaxControlLine/2 {
			t.Errorf("%s's JWT is %d bytes, more than half of the %d-byte protocol line", id, len(token), busauth.MaxControlLine)
		}
	}
	conf, err := a.ServerConfig()
	if err != nil || !strings.Contains(conf, "max_control_line: ") {
		t.Errorf("the server configuration does not raise the protocol line: %v", err)
	}
}

// TestEachServiceWritesOnlyItsOwnHeartbeats: every service may put and
// delete keys of its own processes in the managers' bucket, none another
// service's but the gateway (which deletes those of managers that are
// gone), and the observer none.
func TestEachServiceWritesOnlyItsOwnHeartbeats(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	keys := map[string]string{} // subject → the service whose key it is
	for _, svc := range subjects.Services {
		keys["$KV."+subjects.ManagersBucket+"."+subjects.ManagerKey(svc, "host-1", "p1")] = svc
	}
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			v := tryPublish(t, bus, id, slices.Collect(maps.Keys(keys)))
			for subject, owner := range keys {
				// The gateway deletes the keys of managers that are gone
				// (flotilla cluster managers remove).
				if refused, allowed := v.PublishRefused(subject), owner == id || id == subjects.Gateway; refused == allowed {
					t.Errorf("%s writing %s: refused=%v, want refused=%v", id, subject, refused, !allowed)
				}
			}
		})
	}
}

// TestOnlyTheGatewayInspectsEveryStream: the gateway reads every stream's
// information (replicas and leader, for GET /api/v1/cluster); another
// identity only that of the streams it uses; and the gateway reads no
// message of a stream not declared for it.
func TestOnlyTheGatewayInspectsEveryStream(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			var tries []string
			for _, u := range endpoints.Streams {
				tries = append(tries, "$JS.API.STREAM.INFO."+u.Stream, "$JS.API.DIRECT.GET."+u.Stream)
			}
			v := tryPublish(t, bus, id, tries)
			for _, u := range endpoints.Streams {
				uses := u.PublishedBy(id) || len(u.ConsumedBy(id)) > 0 || u.ReadBy(id)
				info := "$JS.API.STREAM.INFO." + u.Stream
				allowed := uses || slices.Contains(endpoints.Inspectors, id) || id == busauth.Observer
				if refused := v.PublishRefused(info); refused == allowed {
					t.Errorf("%s asking %s: refused=%v, want refused=%v", id, info, refused, !allowed)
				}
				get := "$JS.API.DIRECT.GET." + u.Stream
				if refused, allowed := v.PublishRefused(get), u.ReadBy(id) || id == busauth.Observer; refused == allowed {
					t.Errorf("%s reading %s: refused=%v, want refused=%v", id, get, refused, !allowed)
				}
			}
		})
	}
	if !slices.Equal(endpoints.Inspectors, []string{subjects.Gateway}) {
		t.Fatalf("inspectors %v, want only the gateway", endpoints.Inspectors)
	}
}

// TestOnlyItsDeclarersDefineAStream: a stream is created or updated (its
// subjects, its retention) only by the services declared to declare it —
// not by a publish-only publisher such as the gateway, which faces the
// network and writes API calls into the audit stream.
func TestOnlyItsDeclarersDefineAStream(t *testing.T) {
	t.Parallel()
	bus := testkit.SecureNATS(t)
	audit := slices.IndexFunc(endpoints.Streams, func(u endpoints.StreamUse) bool { return u.Stream == subjects.AuditStream })
	if u := endpoints.Streams[audit]; !u.PublishedBy(subjects.Gateway) || u.DeclaredBy(subjects.Gateway) {
		t.Fatalf("the gateway should publish into %s without declaring it: %+v", subjects.AuditStream, u)
	}
	for _, id := range busauth.Identities() {
		t.Run(id, func(t *testing.T) {
			t.Parallel()
			nc, v := bus.Watch(t, id)
			var probes []string
			for _, u := range endpoints.Streams {
				probes = append(probes, "$JS.API.STREAM.CREATE."+u.Stream, "$JS.API.STREAM.UPDATE."+u.Stream)
			}
			for _, p := range probes {
				if err := nc.Publish(p, nil); err != nil {
					t.Fatal(err)
				}
			}
			v.Settle(t)
			for i, p := range probes {
				u := endpoints.Streams[i/2]
				allowed := u.DeclaredBy(id)
				if refused := v.PublishRefused(p); refused == allowed {
					t.Errorf("%s publishing to %s: refused=%v, want refused=%v", id, p, refused, !allowed)
				}
			}
		})
	}
}

// TestOlderCredentialsGetThisReleasesPermissions: credentials minted with
// other permissions (an older release's) are signed again with this
// build's when the authority is opened, keeping their key; ones already
// current are left as they are.
func TestOlderCredentialsGetThisReleasesPermissions(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "bus")
	auth, err := busauth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	current, _ := os.ReadFile(auth.Creds(subjects.CA))
	older, err := auth.Mint(subjects.Gateway, jwt.Permissions{Pub: jwt.Permission{Allow: jwt.StringList{"flotilla.old"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auth.Creds(subjects.Gateway), older, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := busauth.LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(auth.Creds(subjects.CA)); !bytes.Equal(again, current) {
		t.Error("current credentials were rewritten")
	}
	data, _ := os.ReadFile(auth.Creds(subjects.Gateway))
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := busauth.Permissions(subjects.Gateway)
	if fmt.Sprint(claims.Permissions) != fmt.Sprint(want) {
		t.Errorf("refreshed permissions:\n%v\nwant\n%v", claims.Permissions, want)
	}
	oldKey, _ := jwt.ParseDecoratedNKey(older)
	newKey, _ := jwt.ParseDecoratedNKey(data)
	oldPub, _ := oldKey.PublicKey()
	newPub, _ := newKey.PublicKey()
	if oldPub != newPub || claims.Subject != oldPub {
		t.Errorf("the key changed: %s → %s (subject %s)", oldPub, newPub, claims.Subject)
	}
	// The refreshed credentials connect and may do this release's work.
	opts := &server.Options{}
	if err := auth.Configure(opts); err != nil {
		t.Fatal(err)
	}
	ns := testkit.Serve(t, opts)
	nc, err := nats.Connect(ns.ClientURL(), busauth.ConnectOptions(subjects.Gateway, auth.Creds(subjects.Gateway))...)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}

// TestCredentialsFromAnotherReleaseAreSaid: CheckCreds passes the
// credentials the authority signs for this release, and names what a
// file signed with other permissions lacks and grants besides.
func TestCredentialsFromAnotherReleaseAreSaid(t *testing.T) {
	t.Parallel()
	auth, err := busauth.LoadOrCreate(filepath.Join(t.TempDir(), "bus"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range busauth.Identities() {
		if err := busauth.CheckCreds(id, auth.Creds(id)); err != nil {
			t.Errorf("this release's %s credentials: %v", id, err)
		}
	}
	// An older release's: one subject fewer to publish to, one more.
	perms, err := busauth.Permissions(subjects.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	dropped := perms.Pub.Allow[0]
	perms.Pub.Allow = append(slices.Clone(perms.Pub.Allow[1:]), "flotilla.call.gateway.inventory.dropped-endpoint")
	creds, err := auth.Mint(subjects.Gateway, perms)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "gateway.creds")
	if err := os.WriteFile(old, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	err = busauth.CheckCreds(subjects.Gateway, old)
	want := "the bus credentials in " + old + " are not this release's for gateway: they do not let it publish to " + dropped +
		"; they let it publish to flotilla.call.gateway.inventory.dropped-endpoint, which this release does not"
	if err == nil || err.Error() != want {
		t.Errorf("another release's credentials: %v\nwant %s", err, want)
	}
	if err := busauth.CheckCreds(subjects.Provisioner, old); err == nil || !strings.Contains(err.Error(), "for provisioner: they do not let it") {
		t.Errorf("another service's credentials: %v", err)
	}
	if err := busauth.CheckCreds(subjects.Gateway, filepath.Join(t.TempDir(), "missing.creds")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("no credentials: %v", err)
	}
}

// TestAnAuthorityOpenedAgainSignsOlderCredentialsAnew: credentials whose
// permissions are another release's are signed again, with the same key,
// when the authority is opened by this one (flotilla up, or
// bus-credentials init of a new release).
func TestAnAuthorityOpenedAgainSignsOlderCredentialsAnew(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "bus")
	auth, err := busauth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	perms, err := busauth.Permissions(subjects.CA)
	if err != nil {
		t.Fatal(err)
	}
	perms.Pub.Allow = perms.Pub.Allow[1:]
	older, err := auth.Mint(subjects.CA, perms)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(auth.Creds(subjects.CA), older, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := busauth.CheckCreds(subjects.CA, auth.Creds(subjects.CA)); err == nil {
		t.Fatal("another release's credentials pass the check")
	}
	if _, err := busauth.LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	if err := busauth.CheckCreds(subjects.CA, auth.Creds(subjects.CA)); err != nil {
		t.Errorf("after the authority was opened again: %v", err)
	}
	now, err := os.ReadFile(auth.Creds(subjects.CA))
	if err != nil {
		t.Fatal(err)
	}
	seed := func(creds []byte) string {
		t.Helper()
		kp, err := jwt.ParseDecoratedNKey(creds)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := kp.Seed()
		return string(s)
	}
	if seed(now) != seed(older) {
		t.Error("the credentials were signed again with another key")
	}
}

// TestReconnectsPresentTheCredentialsConnectedWith: a service's
// credentials file is read when it first connects; a reconnect presents the
// same credentials, not a file put in its place meanwhile (a service takes
// new credentials when restarted, after its start's check).
func TestReconnectsPresentTheCredentialsConnectedWith(t *testing.T) {
	t.Parallel()
	auth, err := busauth.LoadOrCreate(filepath.Join(t.TempDir(), "bus"))
	if err != nil {
		t.Fatal(err)
	}
	opts := &server.Options{}
	if err := auth.Configure(opts); err != nil {
		t.Fatal(err)
	}
	ns := testkit.Serve(t, opts)
	creds := filepath.Join(t.TempDir(), "gateway.creds")
	data, _ := os.ReadFile(auth.Creds(subjects.Gateway))
	if err := os.WriteFile(creds, data, 0o600); err != nil {
		t.Fatal(err)
	}
	reconnected := make(chan struct{}, 1)
	nc, err := nats.Connect(ns.ClientURL(), append(busauth.ConnectOptions(subjects.Gateway, creds),
		nats.ReconnectWait(10*time.Millisecond), nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := os.WriteFile(creds, []byte("not credentials\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := nc.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatalf("no reconnect with the credentials connected with: %v", nc.LastError())
	}
	if _, err := nc.Subscribe(busauth.InboxPrefix(subjects.Gateway)+".x", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil || nc.LastError() != nil {
		t.Fatalf("after the reconnect: %v %v", err, nc.LastError())
	}
}
