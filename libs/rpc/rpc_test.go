package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
)

// serve starts an inventory service on its own connection with one extra
// endpoint, as the inventory does.
func serve[Req proto.Message](t *testing.T, nc *nats.Conn, ep endpoints.Endpoint[Req, *inventoryv1.Network], f rpc.Func[Req, *inventoryv1.Network], opts ...rpc.Option) {
	t.Helper()
	s, err := rpc.New(nc, subjects.Inventory, "1.0.0", "test inventory", slog.New(slog.DiscardHandler), noop.NewTracerProvider(), nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if err := rpc.Handle(s, ep, f); err != nil {
		t.Fatal(err)
	}
}

func TestACallCarriesItsActorAndTypedReply(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	var gotActor atomic.Value
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(_ context.Context, actor vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		gotActor.Store(actor)
		return &inventoryv1.Network{Id: r.GetId(), Name: "lab"}, nil
	})
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	n, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n-1"}, rpc.As(vocab.User("ada")))
	if err != nil || n.GetId() != "n-1" || n.GetName() != "lab" {
		t.Fatalf("call: %v %v", n, err)
	}
	if a := gotActor.Load(); a != vocab.User("ada") {
		t.Errorf("handler saw actor %v, want user:ada", a)
	}
	// Without As a service acts as itself.
	prov := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Provisioner, 0)
	if _, err := rpc.Call(t.Context(), prov, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n-1"}); err != nil {
		t.Fatal(err)
	}
	if a := gotActor.Load(); a != vocab.System(subjects.Provisioner) {
		t.Errorf("handler saw actor %v, want system:provisioner", a)
	}
}

func TestServiceErrorsKeepKindReasonAndField(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkUpdate, func(_ context.Context, _ vocab.Actor, r *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
		switch r.GetNetwork().GetName() {
		case "stale":
			return nil, apierr.Conflict(apierr.ReasonVersionMismatch, "network %q is at version 3, not 2", "stale")
		case "bad":
			return nil, apierr.Invalid("dns.hostnamePattern", "must contain {name} or {id}")
		}
		return nil, errors.New("dial tcp 10.0.0.7:5432: password authentication failed for user flotilla")
	})
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	update := func(name string) *apierr.Error {
		_, err := rpc.Call(t.Context(), gw, endpoints.NetworkUpdate, &inventoryv1.UpdateNetworkRequest{Network: &inventoryv1.Network{Name: name}})
		var e *apierr.Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: error %v (%T), want *apierr.Error", name, err, err)
		}
		return e
	}
	if e := update("stale"); e.Kind != apierr.KindConflict || e.Reason != apierr.ReasonVersionMismatch || !strings.Contains(e.Message, "version 3") {
		t.Errorf("stale: %+v", e)
	}
	if e := update("bad"); e.Kind != apierr.KindInvalid || e.Reason != apierr.ReasonInvalidField || e.Field != "dns.hostnamePattern" {
		t.Errorf("bad: %+v", e)
	}
	if e := update("boom"); e.Kind != apierr.KindInternal || strings.Contains(e.Message, "password") || !strings.Contains(e.Message, "error id") {
		t.Errorf("internal error crossed the bus as %+v", e)
	}
}

func TestACallerMustBeDeclared(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	var calls atomic.Int32
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkUpdate, func(context.Context, vocab.Actor, *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
		calls.Add(1)
		return &inventoryv1.Network{}, nil
	})
	// Only the gateway may update networks.
	agentgw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.AgentGW, 0)
	_, err := rpc.Call(t.Context(), agentgw, endpoints.NetworkUpdate, &inventoryv1.UpdateNetworkRequest{})
	if !apierr.Is(err, apierr.KindPermissionDenied) || !strings.Contains(err.Error(), "declared callers") {
		t.Fatalf("undeclared caller: %v", err)
	}
	if calls.Load() != 0 {
		t.Fatal("the request reached the service")
	}
}

// TestACallWhoseTimeRunsOutWhileSentAgainSaysNobodyListened: a request
// nobody took, sent again as the call's time runs out, is cut short before
// anything could answer; the call says that nobody listened (what it last
// learned), not that the service did not answer in time.
func TestACallWhoseTimeRunsOutWhileSentAgainSaysNobodyListened(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	tries := 0
	err := rpc.UntilTaken(ctx, func() error {
		if tries++; tries == 1 {
			return fmt.Errorf("nats request x: no service is listening: %w", nats.ErrNoResponders)
		}
		<-ctx.Done() // the time runs out while this try waits
		return fmt.Errorf("nats request x: %w", ctx.Err())
	})
	if !errors.Is(err, nats.ErrNoResponders) || tries != 2 {
		t.Fatalf("after %d tries: %v; want the first try's no responders", tries, err)
	}
	// A first try cut short is a timeout, as it was.
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	err = rpc.UntilTaken(ctx2, func() error { <-ctx2.Done(); return ctx2.Err() })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a first try cut short: %v", err)
	}
}

// A service nobody listens to is unavailable once the call has tried for
// rpc.ResponderWait, or when its time is up, if that is sooner.
func TestNobodyListeningIsUnavailable(t *testing.T) {
	t.Parallel()
	gw := rpc.NewClient(testkit.NATSConn(t, testkit.NATS(t)), subjects.Gateway, 0)
	start := time.Now()
	_, err := rpc.Call(t.Context(), gw, endpoints.PingSecrets, &systemv1.PingRequest{})
	if !apierr.Is(err, apierr.KindUnavailable) || !errors.Is(err, nats.ErrNoResponders) || !strings.Contains(err.Error(), "secrets") {
		t.Fatalf("no responders: %v", err)
	}
	if took := time.Since(start); took < rpc.ResponderWait {
		t.Errorf("the call gave up after %v, before rpc.ResponderWait (%v)", took, rpc.ResponderWait)
	}
	_, err = rpc.Call(t.Context(), gw, endpoints.PingSecrets, &systemv1.PingRequest{}, rpc.Timeout(200*time.Millisecond))
	if !apierr.Is(err, apierr.KindUnavailable) || !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("no responders within a call's shorter time: %v", err)
	}
}

// A call sent before any instance of its service listens (one starting
// with it, or the only one reconnecting) is taken by the first that does,
// within rpc.ResponderWait.
func TestACallWaitsForItsServiceToListen(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	untaken := counterOf(t, "flotilla_rpc_calls_untaken_total", subjects.Inventory)
	type result struct {
		n   *inventoryv1.Network
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n"})
		done <- result{n, err}
	}()
	time.Sleep(300 * time.Millisecond)
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(_ context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		return &inventoryv1.Network{Id: r.GetId(), Name: "late"}, nil
	})
	if r := <-done; r.err != nil || r.n.GetName() != "late" {
		t.Fatalf("a call sent before its service listened: %v, %v", r.n, r.err)
	}
	// Not taken at 0, 10, 30, 70 and 150 ms: each counted.
	if n := counterOf(t, "flotilla_rpc_calls_untaken_total", subjects.Inventory); n < untaken+5 {
		t.Errorf("flotilla_rpc_calls_untaken_total went from %v to %v", untaken, n)
	}
}

// A call its caller gives up (an API client gone, a load balancer cutting
// the request) is unavailable, not an internal error logged as a fault.
func TestACallGivenUpByItsCallerIsNotInternal(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	held := make(chan struct{})
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(context.Context, vocab.Actor, *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		<-held // answers only once the test is over
		return nil, errors.New("too late")
	})
	t.Cleanup(func() { close(held) }) // before the service stops, waiting for its requests
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := rpc.Call(ctx, gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n-1"})
	if !apierr.Is(err, apierr.KindUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("a call given up: %v; want unavailable, wrapping context.Canceled", err)
	}
}

// A call whose connection breaks while it waits for its answer is
// unavailable, may or may not have taken effect, and not an internal error:
// when the answer was sent while the connection was down, soon after the
// connection is back (not at the end of its timeout); and when the
// connection was made again on purpose (a connection going back to its
// home server: nats.go gives up the requests waiting on it) at once.
func TestACallWhoseConnectionBreaksIsUnavailable(t *testing.T) {
	t.Parallel()
	for name, breakIt := range map[string]func(*testing.T, *server.Server, *nats.Conn){
		"dropped":     func(t *testing.T, ns *server.Server, nc *nats.Conn) { testkit.DropConnection(t, ns, nc) },
		"reconnected": func(t *testing.T, _ *server.Server, nc *nats.Conn) { _ = nc.ForceReconnect() },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := testkit.NATS(t)
			came, answer := make(chan struct{}), make(chan struct{})
			serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
				close(came)
				<-answer
				return &inventoryv1.Network{Id: r.GetId()}, nil
			})
			nc, err := natsx.Connect(ns.ClientURL(), t.Name())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			done := make(chan error, 1)
			go func() {
				_, err := rpc.Call(t.Context(), rpc.NewClient(nc, subjects.Gateway, time.Minute), endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n-1"})
				done <- err
			}()
			<-came
			breakIt(t, ns, nc)
			close(answer)
			err = <-done
			if !apierr.Is(err, apierr.KindUnavailable) || !errors.Is(err, natsx.ErrConnectionLost) || !strings.Contains(err.Error(), "may or may not have taken effect") {
				t.Fatalf("%v; want unavailable, may or may not have taken effect", err)
			}
		})
	}
}

// readiness starts service name (version 2.0.0) whose readiness check
// fails saying notReady until the test sets the flag it returns.
func readiness(t *testing.T, ns *server.Server, name, notReady string) (*rpc.Service, *atomic.Bool) {
	t.Helper()
	ready := &atomic.Bool{}
	s, err := rpc.New(testkit.NATSConn(t, ns), name, "2.0.0", "test "+name, slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context) error {
			if !ready.Load() {
				return errors.New(notReady)
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s, ready
}

func TestPingAnswersWhenReady(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	_, ready := readiness(t, ns, subjects.CA, "the CA certificate expired")
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	if _, err := rpc.Call(t.Context(), gw, endpoints.PingCA, &systemv1.PingRequest{}); !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("ping while not ready: %v", err)
	}
	ready.Store(true)
	if p, err := rpc.Call(t.Context(), gw, endpoints.PingCA, &systemv1.PingRequest{}); err != nil || p.GetVersion() != "2.0.0" {
		t.Fatalf("ping: %v %v", p, err)
	}
}

// A ping reaches every instance of a service and the first ready answer
// counts: an instance that is cut off (silent) or not ready does not make
// the service look down while another is ready. With none ready, the ping
// says why soon after the first not-ready answer, without waiting for the
// silent one.
func TestAPingIsAnsweredByAnyReadyInstance(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	release := make(chan struct{})
	silent, err := rpc.New(testkit.NATSConn(t, ns), subjects.CA, "2.0.0", "cut-off CA", slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context) error { <-release; return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = silent.Stop() })
	t.Cleanup(func() { close(release) }) // before the silent instance stops, waiting for its requests
	readiness(t, ns, subjects.CA, "the CA certificate expired")
	goodNC := testkit.NATSConn(t, ns)
	good, err := rpc.New(goodNC, subjects.CA, "2.0.0", "ready CA", slog.New(slog.DiscardHandler), noop.NewTracerProvider(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = good.Stop() })

	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 2*time.Second)
	for i := range 10 {
		if p, err := rpc.Call(t.Context(), gw, endpoints.PingCA, &systemv1.PingRequest{}); err != nil || p.GetVersion() != "2.0.0" {
			t.Fatalf("ping %d with one instance ready: %v %v", i, p, err)
		}
	}
	_ = good.Stop()
	if err := goodNC.Flush(); err != nil { // the server has its unsubscription: no ping reaches it now
		t.Fatal(err)
	}
	if _, err := rpc.Call(t.Context(), gw, endpoints.PingCA, &systemv1.PingRequest{}); !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("ping with none ready: %v; want the not-ready instance's answer", err)
	}
}

// TestAnInternalErrorWhileNotReadyIsUnavailable: a request that fails
// with an internal error while its service is not ready (its database
// unreachable) is answered unavailable, try again, without the cause; the
// same error while it is ready stays internal, and an error the service
// chose keeps its kind either way.
func TestAnInternalErrorWhileNotReadyIsUnavailable(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	s, ready := readiness(t, ns, subjects.Inventory,
		"failed to connect to `user=flotilla_inventory database=flotilla`: 10.0.0.7:5432: server closed the connection unexpectedly")
	err := rpc.Handle(s, endpoints.NetworkUpdate, func(_ context.Context, _ vocab.Actor, r *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
		if r.GetNetwork().GetName() == "stale" {
			return nil, apierr.Conflict(apierr.ReasonVersionMismatch, "network %q is at version 3, not 2", "stale")
		}
		return nil, errors.New("commit: failed to receive message: unexpected EOF")
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	update := func(name string) error {
		_, err := rpc.Call(t.Context(), gw, endpoints.NetworkUpdate, &inventoryv1.UpdateNetworkRequest{Network: &inventoryv1.Network{Name: name}})
		return err
	}
	err = update("write")
	if !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "try again") ||
		strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "10.0.0.7") {
		t.Errorf("a write failing while not ready: %v; want unavailable, try again, no cause", err)
	}
	if err := update("stale"); !apierr.Is(err, apierr.KindConflict) {
		t.Errorf("a conflict while not ready: %v; want the conflict", err)
	}
	ready.Store(true)
	if err := update("write"); !apierr.Is(err, apierr.KindInternal) {
		t.Errorf("a write failing while ready: %v; want an internal error", err)
	}
}

// TestAnInternalErrorFromALostConnectionIsUnavailable: a request whose
// handler failed on a connection lost under it (its database's host
// unreachable as a partition heals, a connection refused or cut short) is
// answered unavailable, try again, without the cause, though the service
// is ready by the time it answers; an internal error of another cause
// stays internal.
func TestAnInternalErrorFromALostConnectionIsUnavailable(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	_, refused := net.Dial("tcp", closed)
	if refused == nil {
		t.Fatalf("a connection to %s, closed, was not refused", closed)
	}
	causes := map[string]error{
		"unreachable": fmt.Errorf("insert network: %w", &net.OpError{Op: "read", Net: "tcp", Err: syscall.EHOSTUNREACH}),
		"refused":     fmt.Errorf("failed to connect to `host=10.0.0.7`: %w", refused),
		"cut short":   fmt.Errorf("commit: failed to receive message: %w", io.ErrUnexpectedEOF),
		"other":       errors.New("commit: failed to receive message: unexpected EOF"),
	}
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkUpdate, func(_ context.Context, _ vocab.Actor, r *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
		return nil, causes[r.GetNetwork().GetName()]
	})
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	for name := range causes {
		_, err := rpc.Call(t.Context(), gw, endpoints.NetworkUpdate, &inventoryv1.UpdateNetworkRequest{Network: &inventoryv1.Network{Name: name}})
		if name == "other" {
			if !apierr.Is(err, apierr.KindInternal) {
				t.Errorf("%s: %v; want an internal error", name, err)
			}
			continue
		}
		if !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "lost a connection") ||
			strings.Contains(err.Error(), "10.0.0.7") || strings.Contains(err.Error(), "127.0.0.1") {
			t.Errorf("%s: %v; want unavailable, a connection lost, no cause", name, err)
		}
	}
}

// TestAHandlerStopsWhenItsCallerStopsWaiting: a request's handler works
// only as long as its caller waits (the call's timeout travels with the
// request). A handler stuck on something that never answers (a database
// on a dead network path) lets go of its place in the pool once its caller
// gave up, so the next request is served; the stuck one is answered
// unavailable, not internal.
func TestAHandlerStopsWhenItsCallerStopsWaiting(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	released, over := make(chan time.Duration, 1), make(chan struct{})
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		if r.GetId() != "stuck" {
			return &inventoryv1.Network{Id: r.GetId()}, nil
		}
		start := time.Now()
		select {
		case <-ctx.Done(): // the database that never answers
		case <-over: // (so a failed test ends)
		}
		released <- time.Since(start)
		return nil, fmt.Errorf("read network: %w", ctx.Err())
	}, rpc.WithConcurrency(1))
	t.Cleanup(func() { close(over) }) // before serve's Stop
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 0)
	get := func(id string, timeout time.Duration) error {
		_, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: id}, rpc.Timeout(timeout))
		return err
	}
	if err := get("stuck", 300*time.Millisecond); !apierr.Is(err, apierr.KindUnavailable) {
		t.Fatalf("the stuck call: %v, want unavailable", err)
	}
	select {
	case took := <-released:
		t.Logf("the stuck handler let go after %v", took.Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck handler still works 10 s after its caller gave up")
	}
	if err := get("next", 5*time.Second); err != nil {
		t.Fatalf("the next call: %v", err)
	}
	// The handler's own answer, to a caller that says it waits 200 ms but
	// listens longer: unavailable, its time ran out, not an internal error.
	req, err := proto.Marshal(&inventoryv1.GetNetworkRequest{Id: "stuck"})
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(endpoints.NetworkGet.Info().CallSubject(subjects.Gateway))
	m.Data = req
	m.Header.Set(natsx.HeaderTimeout, "200")
	reply, err := testkit.NATSConn(t, ns).RequestMsg(m, 5*time.Second)
	if err != nil {
		t.Fatalf("a request telling its timeout: %v", err)
	}
	if code, said := reply.Header.Get("Nats-Service-Error-Code"), reply.Header.Get("Nats-Service-Error"); code != string(apierr.KindUnavailable) ||
		!strings.Contains(said, "before its caller stopped waiting") {
		t.Errorf("the handler answered %s %q; want unavailable, its caller stopped waiting", code, said)
	}
	<-released
}

// An instance whose readiness check fails steps out of its queue groups
// while another instance is ready, so every request goes to one that can
// serve it; it steps back in once ready. Alone, it stays in and answers
// "not ready" rather than leave its callers with nobody to ask.
func TestANotReadyInstanceStepsOutWhileAnotherIsReady(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	var aReady atomic.Bool
	var aChecks atomic.Int64
	a, err := rpc.New(testkit.NATSConn(t, ns), subjects.Inventory, "2.0.0", "instance a", slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context) error {
			aChecks.Add(1)
			if !aReady.Load() {
				return errors.New("failed to connect to `database=flotilla`: connection refused")
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	answer := func(name string, ready *atomic.Bool) rpc.Func[*inventoryv1.GetNetworkRequest, *inventoryv1.Network] {
		return func(context.Context, vocab.Actor, *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
			if !ready.Load() {
				return nil, errors.New("acquire a connection: connection refused")
			}
			return &inventoryv1.Network{Name: name}, nil
		}
	}
	if err := rpc.Handle(a, endpoints.NetworkGet, answer("a", &aReady)); err != nil {
		t.Fatal(err)
	}
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 5*time.Second)
	get := func() (string, error) {
		n, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n"})
		return n.GetName(), err
	}

	// Alone and not ready: it stays in, through several checks.
	for since := aChecks.Load(); aChecks.Load() < since+3; {
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := get(); !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "not ready just now") {
		t.Fatalf("a request to the only instance, not ready: %v; want its unavailable answer", err)
	}

	stepOuts := counterOf(t, "flotilla_rpc_step_outs_total", subjects.Inventory)
	var bReady atomic.Bool
	bReady.Store(true)
	b, err := rpc.New(testkit.NATSConn(t, ns), subjects.Inventory, "2.0.0", "instance b", slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop() })
	if err := rpc.Handle(b, endpoints.NetworkGet, answer("b", &bReady)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the instance not ready stepped out: 20 requests in a row answered", func() bool {
		for range 20 {
			if name, err := get(); err != nil || name != "b" {
				return false
			}
		}
		return true
	})
	// Its pings are still answered, by the instance that is ready; it says
	// why it is out (the cluster's list of managers shows it).
	if _, err := rpc.Call(t.Context(), gw, endpoints.PingInventory, &systemv1.PingRequest{}); err != nil {
		t.Fatalf("ping with one instance ready: %v", err)
	}
	if why, out := a.Readiness(); !out || !strings.Contains(why, "connection refused") {
		t.Fatalf("the instance out says %q, out %v", why, out)
	}
	if why, out := b.Readiness(); out || why != "" {
		t.Fatalf("the instance serving says %q, out %v", why, out)
	}
	if n := counterOf(t, "flotilla_rpc_step_outs_total", subjects.Inventory); n < stepOuts+1 {
		t.Fatalf("flotilla_rpc_step_outs_total went from %v to %v", stepOuts, n)
	}

	aReady.Store(true)
	testkit.WaitFor(t, 10*time.Second, "the instance ready again answers requests", func() bool {
		name, err := get()
		return err == nil && name == "a"
	})
	if why, out := a.Readiness(); out || why != "" {
		t.Fatalf("the instance back in says %q, out %v", why, out)
	}
}

// An instance stepping out gives up the requests it holds: one stuck on
// what made it not ready (its database out of reach) is answered
// unavailable at once, not when its caller stops waiting; and once the
// instance is back in, its requests are served again.
func TestAnInstanceSteppingOutGivesUpTheRequestsItHolds(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	var aReady atomic.Bool
	aReady.Store(true)
	a, err := rpc.New(testkit.NATSConn(t, ns), subjects.Inventory, "2.0.0", "instance a", slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context) error {
			if !aReady.Load() {
				return errors.New("failed to connect to `database=flotilla`: i/o timeout")
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	held := make(chan struct{}, 1)
	if err := rpc.Handle(a, endpoints.NetworkGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		if r.GetId() == "stuck" {
			held <- struct{}{}
			<-ctx.Done() // a query on a connection that went dead
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("query: %w", err)
		}
		return &inventoryv1.Network{Name: "a"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 8*time.Second)
	stuck := make(chan error, 1)
	go func() {
		_, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "stuck"})
		stuck <- err
	}()
	<-held

	b, err := rpc.New(testkit.NATSConn(t, ns), subjects.Inventory, "2.0.0", "instance b", slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := rpc.Handle(b, endpoints.NetworkGet, func(context.Context, vocab.Actor, *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		return &inventoryv1.Network{Name: "b"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	aReady.Store(false)
	err = <-stuck
	if !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "gave the request up") {
		t.Fatalf("the request held by the instance that stepped out: %v; want unavailable, given up", err)
	}
	if _, out := a.Readiness(); !out {
		t.Fatal("the instance not ready did not step out")
	}

	// Back in, alone: its requests are served, not given up.
	aReady.Store(true)
	testkit.WaitFor(t, 10*time.Second, "the instance to step back in", func() bool { _, out := a.Readiness(); return !out })
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	n, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n"})
	if err != nil || n.GetName() != "a" {
		t.Fatalf("a request to the instance back in: %v, %v", n, err)
	}
}

// counterOf reads the counter name of service from the process's
// Prometheus registry (0 before the first).
func counterOf(t *testing.T, name, service string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "service" && l.GetValue() == service {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// An instance out of its queue groups answers the gateway's ping ready
// when it is, but tells another instance of its service no: one that
// serves nothing is no peer to leave the requests to.
func TestAnInstanceOutIsNoPeerToStepOutFor(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	s, err := rpc.New(testkit.NATSConn(t, ns), subjects.Inventory, "2.0.0", "out", slog.New(slog.DiscardHandler), noop.NewTracerProvider(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	rpc.StepOut(s)
	nc := testkit.NATSConn(t, ns)
	if _, err := rpc.Call(t.Context(), rpc.NewClient(nc, subjects.Gateway, 0), endpoints.PingInventory, &systemv1.PingRequest{}); err != nil {
		t.Fatalf("the gateway's ping of an instance out but ready: %v", err)
	}
	_, err = rpc.Call(t.Context(), rpc.NewClient(nc, subjects.Inventory, 0), endpoints.PingInventory, &systemv1.PingRequest{})
	if !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "out of its queue groups") {
		t.Fatalf("a peer's ping of an instance out: %v; want unavailable, out of its queue groups", err)
	}
}

func TestPerInstanceEndpointsReachOnlyTheirSubscriber(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	gwConn := testkit.NATSConn(t, ns)
	log, tp := slog.New(slog.DiscardHandler), noop.NewTracerProvider()
	got := make(chan string, 2)
	subs := rpc.NewSubscriber(gwConn)
	defer subs.Close()
	sub, err := rpc.Subscribe(subs, subjects.AgentGW, endpoints.AgentCommand.At("i-1"), log, tp,
		func(_ context.Context, _ vocab.Actor, c *agentv1.Command) (*emptypb.Empty, error) {
			if c.GetId() == "" {
				return nil, apierr.Invalid("id", "is required")
			}
			got <- c.GetId()
			return &emptypb.Empty{}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := gwConn.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := rpc.Subscribe(subs, subjects.AgentGW, endpoints.AgentCommand, log, tp,
		func(context.Context, vocab.Actor, *agentv1.Command) (*emptypb.Empty, error) { return nil, nil }); err == nil {
		t.Fatal("an unbound per-instance endpoint was subscribed")
	}
	prov := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Provisioner, 0)
	if _, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-1"), &agentv1.Command{Id: "c-1"}); err != nil {
		t.Fatal(err)
	}
	if id := <-got; id != "c-1" {
		t.Fatalf("subscriber got %q", id)
	}
	_, err = rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-1"), &agentv1.Command{})
	if e := new(apierr.Error); !errors.As(err, &e) || e.Field != "id" {
		t.Fatalf("invalid command: %v", err)
	}
	if _, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-2"), &agentv1.Command{Id: "c-2"}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("command for an instance nobody serves: %v", err)
	}
	_ = sub.Unsubscribe()
}

// Not parallel: it counts the process's goroutines.
func TestSubscriptionsShareTheirSubscribersGoroutine(t *testing.T) {
	ns := testkit.NATS(t)
	gwConn := testkit.NATSConn(t, ns)
	log, tp := slog.New(slog.DiscardHandler), noop.NewTracerProvider()
	subs := rpc.NewSubscriber(gwConn)
	defer subs.Close()
	release := make(chan struct{})
	answer := func(c *agentv1.Command) (*emptypb.Empty, error) {
		if c.GetId() == "slow" {
			<-release
		}
		return &emptypb.Empty{}, nil
	}
	before := runtime.NumGoroutine()
	const n = 200
	held := make([]*rpc.Subscription, n)
	for i := range held {
		sub, err := rpc.Subscribe(subs, subjects.AgentGW, endpoints.AgentCommand.At(fmt.Sprintf("i-%d", i)), log, tp,
			func(_ context.Context, _ vocab.Actor, c *agentv1.Command) (*emptypb.Empty, error) { return answer(c) })
		if err != nil {
			t.Fatal(err)
		}
		held[i] = sub
	}
	if err := gwConn.Flush(); err != nil {
		t.Fatal(err)
	}
	if grown := runtime.NumGoroutine() - before; grown > n/10 {
		t.Errorf("%d subscriptions added %d goroutines", n, grown)
	}

	// A request that takes its time holds up no other.
	prov := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Provisioner, 0)
	slow := make(chan error, 1)
	go func() {
		_, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-0"), &agentv1.Command{Id: "slow"})
		slow <- err
	}()
	for _, at := range []string{"i-0", "i-1"} {
		if _, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At(at), &agentv1.Command{Id: "quick"}); err != nil {
			t.Fatalf("a request to %s behind a slow one: %v", at, err)
		}
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}

	// An endpoint unsubscribed has no responders.
	if err := held[1].Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := gwConn.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-1"), &agentv1.Command{Id: "c"}); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("a command for an unsubscribed endpoint: %v", err)
	}
	if _, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-2"), &agentv1.Command{Id: "c"}); err != nil {
		t.Fatalf("another endpoint: %v", err)
	}
}

// TestStopAnswersTheRequestsInHand: Stop returns once every request the
// service had received is answered, those waiting for a place in a full
// pool too.
func TestStopAnswersTheRequestsInHand(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	s, err := rpc.New(testkit.NATSConn(t, ns), subjects.Inventory, "1.0.0", "test", slog.New(slog.DiscardHandler), noop.NewTracerProvider(), nil,
		rpc.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	var started, answered atomic.Int64
	err = rpc.Handle(s, endpoints.NetworkGet, func(_ context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		started.Add(1)
		time.Sleep(100 * time.Millisecond)
		answered.Add(1)
		return &inventoryv1.Network{Id: r.GetId()}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 5*time.Second)
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n"})
			errs <- err
		}()
	}
	testkit.WaitFor(t, 5*time.Second, "the first request in hand", func() bool { return started.Load() == 1 })
	time.Sleep(20 * time.Millisecond) // the other two at the service, waiting for the pool
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if n := answered.Load(); n != 3 {
		t.Fatalf("Stop returned with %d of 3 requests answered", n)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("a request in hand at Stop: %v", err)
		}
	}
}

func TestHandleRefusesAnotherServicesEndpoint(t *testing.T) {
	t.Parallel()
	s, err := rpc.New(testkit.NATSConn(t, testkit.NATS(t)), subjects.CA, "", "test", slog.New(slog.DiscardHandler), noop.NewTracerProvider(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	err = rpc.Handle(s, endpoints.NetworkGet, func(context.Context, vocab.Actor, *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		return nil, nil
	})
	if err == nil {
		t.Fatal("the CA registered an inventory endpoint")
	}
}

// TestWhatCannotCrossTheBusIsAnErrorNotATimeout: a request with a NUL byte
// is refused naming the field; a request or a reply larger than the bus's
// message limit is an error at once, not a caller waiting for its timeout.
func TestWhatCannotCrossTheBusIsAnErrorNotATimeout(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkUpdate, func(_ context.Context, _ vocab.Actor, r *inventoryv1.UpdateNetworkRequest) (*inventoryv1.Network, error) {
		// Echoing the name back: a long name makes a reply too large.
		return &inventoryv1.Network{Name: r.GetNetwork().GetName() + r.GetNetwork().GetName()}, nil
	})
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, time.Minute)
	update := func(name string) error {
		_, err := rpc.Call(t.Context(), gw, endpoints.NetworkUpdate, &inventoryv1.UpdateNetworkRequest{Network: &inventoryv1.Network{Id: "n", Name: name}})
		return err
	}
	if err := update("lab\x00"); apierr.ReasonOf(err) != apierr.ReasonInvalidField || !strings.Contains(err.Error(), "name: must not contain a NUL byte") {
		t.Errorf("NUL in a field: %v", err)
	}
	limit := int(testkit.NATSConn(t, ns).MaxPayload())
	// Had the reply been lost, the call would end unavailable after its
	// timeout.
	if err := update(strings.Repeat("x", limit/2+1)); !apierr.Is(err, apierr.KindInternal) || !strings.Contains(err.Error(), "error id") {
		t.Errorf("reply over the limit: %v", err)
	}
	if err := update(strings.Repeat("x", limit+1)); apierr.ReasonOf(err) != apierr.ReasonTooLarge {
		t.Errorf("request over the limit: %v", err)
	}
}

// TestAnEndpointServesRequestsConcurrentlyUpToItsPool holds each request
// until three are in the handler at once: with a pool of three they all
// get in (one at a time would wait out the hold), and never a fourth.
func TestAnEndpointServesRequestsConcurrentlyUpToItsPool(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	var in, most atomic.Int32
	all := make(chan struct{})
	var once sync.Once
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(_ context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		n := in.Add(1)
		defer in.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if n == 3 {
			once.Do(func() { close(all) })
		}
		select {
		case <-all:
		case <-time.After(5 * time.Second):
		}
		return &inventoryv1.Network{Id: r.GetId()}, nil
	}, rpc.WithConcurrency(3))
	gw := rpc.NewClient(testkit.NATSConn(t, ns), subjects.Gateway, 20*time.Second)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			if _, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: fmt.Sprint(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := most.Load(); got != 3 {
		t.Fatalf("at most %d requests were served at once, want 3 (the pool)", got)
	}
}

// TestOnlyTheGatewayNamesAClientsCredentialAndAddress: the role, token id
// and address a call names reach the handler from the gateway, and are
// ignored from any other caller (none has API clients).
func TestOnlyTheGatewayNamesAClientsCredentialAndAddress(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	type seen struct {
		cred   rpc.Credential
		source string
	}
	var got atomic.Value
	serve(t, testkit.NATSConn(t, ns), endpoints.NetworkGet, func(ctx context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
		got.Store(seen{rpc.CredentialOf(ctx), rpc.Source(ctx)})
		return &inventoryv1.Network{Id: r.GetId()}, nil
	})
	cred := rpc.Credential{Role: vocab.RoleOperator, TokenID: "0123456789abcdef"}
	for _, c := range []struct {
		caller string
		want   seen
	}{
		{subjects.Gateway, seen{cred, "192.0.2.1"}},
		{subjects.Provisioner, seen{}},
	} {
		client := rpc.NewClient(testkit.NATSConn(t, ns), c.caller, 0)
		if _, err := rpc.Call(t.Context(), client, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n-1"},
			rpc.WithCredential(cred), rpc.ForClient("192.0.2.1")); err != nil {
			t.Fatal(err)
		}
		if s := got.Load().(seen); s != c.want {
			t.Errorf("called by %s, the handler saw %+v, want %+v", c.caller, s, c.want)
		}
	}
}

// routedServer starts a NATS server of a two-server cluster on the given
// client and cluster ports, routing to the other's cluster port, with the
// server's response permissions on: user "svc" may answer only the
// requests it received on its current connection, and publish nothing
// else; user "caller" may do anything.
func routedServer(t *testing.T, name string, port, clusterPort, otherClusterPort int) *server.Server {
	t.Helper()
	opts := &server.Options{
		ServerName: name, Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true,
		Cluster: server.ClusterOpts{Name: "rpc-test", Host: "127.0.0.1", Port: clusterPort},
		Routes:  server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", otherClusterPort)),
		Users: []*server.User{
			{Username: "svc", Password: "svc", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"nothing.at.all"}},
				Subscribe: &server.SubjectPermission{Allow: []string{">"}},
				Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
			}},
			{Username: "caller", Password: "caller"},
		},
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatalf("server %s not ready", name)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// freePorts returns n ports free just now on 127.0.0.1.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// TestAHomecomingLosesNoAnswer: a service whose bus connection goes back
// to its home server answers every request sent meanwhile. The server lets
// a connection answer only requests it received itself, so a request
// received before the reconnection and answered after it would be left
// unanswered; the service pauses until those it has are answered, and
// serves again once home. Another instance takes the requests meanwhile;
// without one, nobody listens for that moment, and callers send their
// requests again until somebody does (rpc.ResponderWait).
func TestAHomecomingLosesNoAnswer(t *testing.T) {
	t.Parallel()
	for _, alone := range []bool{false, true} {
		name := "another instance takes the requests"
		if alone {
			name = "its only instance"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var byHoming atomic.Int64
			serveOn := func(nc *nats.Conn, who string) {
				serve(t, nc, endpoints.NetworkGet, func(_ context.Context, _ vocab.Actor, r *inventoryv1.GetNetworkRequest) (*inventoryv1.Network, error) {
					time.Sleep(30 * time.Millisecond) // requests in flight at any moment
					if who == "homing" {
						byHoming.Add(1)
					}
					return &inventoryv1.Network{Id: r.GetId(), Name: who}, nil
				})
			}
			homecoming(t, serveOn, !alone, &byHoming, func(caller *nats.Conn) func() error {
				gw := rpc.NewClient(caller, subjects.Gateway, 5*time.Second)
				return func() error {
					_, err := rpc.Call(t.Context(), gw, endpoints.NetworkGet, &inventoryv1.GetNetworkRequest{Id: "n"})
					return err
				}
			})
		})
	}
}

// TestAPausingSubscriberLetsNoRequestReachItsConnection: a Subscriber
// pausing for a homecoming drains its subscriptions, so that the server
// sends nothing more down the connection about to be made again (a
// request there would be lost with it, and an answer sent on the new
// connection refused): a request meanwhile finds no responders, and an
// rpc.Call sends it again. The request in hand is answered before the
// pause ends; on resume the endpoints are served again, with those
// subscribed during the pause and without those unsubscribed.
func TestAPausingSubscriberLetsNoRequestReachItsConnection(t *testing.T) {
	t.Parallel()
	ns := testkit.NATS(t)
	nc := testkit.NATSConn(t, ns)
	subs := rpc.NewSubscriber(nc)
	t.Cleanup(subs.Close)
	held, release := make(chan struct{}, 1), make(chan struct{})
	var calls atomic.Int64
	serve := func(id string) *rpc.Subscription {
		t.Helper()
		return serveCommands(t, nc, subs, id, func() {
			if calls.Add(1) == 1 {
				held <- struct{}{}
				<-release
			}
		})
	}
	serve("i-1")
	gone := serve("i-3") // unsubscribed during the pause: its agent left
	caller := testkit.NATSConn(t, ns)
	prov := rpc.NewClient(caller, subjects.Provisioner, 5*time.Second)
	call := func(id string) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At(id), &agentv1.Command{Id: "c"})
			done <- err
		}()
		return done
	}
	noResponders := func(id string) bool {
		_, err := caller.Request(endpoints.AgentCommand.At(id).Info().CallSubject(subjects.Provisioner), nil, time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	}

	inHand := call("i-1")
	<-held
	paused := make(chan func(), 1)
	go func() { paused <- rpc.Pause(t.Context(), subs) }()
	testkit.WaitFor(t, 5*time.Second, "a request to the pausing Subscriber to find no responders", func() bool { return noResponders("i-1") })
	serve("i-2") // during the pause
	if !noResponders("i-2") {
		t.Fatal("an endpoint subscribed during the pause is served before it ends")
	}
	if err := gone.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-paused:
		t.Fatal("the pause ended with a request in hand")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-inHand; err != nil {
		t.Fatalf("the request in hand at the pause: %v", err)
	}
	resume := <-paused
	meanwhile := call("i-1")
	time.Sleep(100 * time.Millisecond)
	resume()
	if err := <-meanwhile; err != nil {
		t.Fatalf("a call made during the pause: %v", err)
	}
	if err := <-call("i-2"); err != nil {
		t.Fatalf("an endpoint subscribed during the pause, after it: %v", err)
	}
	if !noResponders("i-3") {
		t.Fatal("an endpoint unsubscribed during the pause is served again after it")
	}
}

// TestAHomecomingLosesNoAgentCommand: the per-instance endpoints of a
// Subscriber (an agent's commands, served by the one agent gateway it is
// connected to) lose no request either when its connection goes home:
// it drains its subscriptions and answers the requests the server sent
// before the drain; callers find no responders until it subscribes again
// on the connection back home, and send their requests again.
func TestAHomecomingLosesNoAgentCommand(t *testing.T) {
	t.Parallel()
	var answered atomic.Int64
	serveOn := func(nc *nats.Conn, _ string) {
		subs := rpc.NewSubscriber(nc)
		t.Cleanup(subs.Close)
		serveCommands(t, nc, subs, "i-1", func() {
			time.Sleep(30 * time.Millisecond)
			answered.Add(1)
		})
	}
	homecoming(t, serveOn, false, &answered, func(caller *nats.Conn) func() error {
		prov := rpc.NewClient(caller, subjects.Provisioner, 5*time.Second)
		return func() error {
			_, err := rpc.Call(t.Context(), prov, endpoints.AgentCommand.At("i-1"), &agentv1.Command{Id: "c"})
			return err
		}
	})
}

// serveCommands serves instance id's agent commands on subs (of nc), each one
// answered once handle returns, until the test ends or the subscription it
// returns is unsubscribed; the server has the subscription when it returns.
func serveCommands(t *testing.T, nc *nats.Conn, subs *rpc.Subscriber, id string, handle func()) *rpc.Subscription {
	t.Helper()
	sub, err := rpc.Subscribe(subs, subjects.AgentGW, endpoints.AgentCommand.At(id), slog.New(slog.DiscardHandler), noop.NewTracerProvider(),
		func(context.Context, vocab.Actor, *agentv1.Command) (*emptypb.Empty, error) {
			handle()
			return &emptypb.Empty{}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// homecoming runs a homecoming under load: two routed servers, home and
// away; serveOn serves on a connection listing home first ("homing") and,
// with alsoAway, on one to away alone ("staying"). Home is shut down, the
// homing connection moves away, home starts again, and calls (made by
// call on 8 workers, through a connection to away) go on until the homing
// connection is home and has answered again (answered counts its
// answers). No call may fail.
func homecoming(t *testing.T, serveOn func(nc *nats.Conn, who string), alsoAway bool, answered *atomic.Int64, call func(caller *nats.Conn) func() error) {
	t.Helper()
	p := freePorts(t, 4) // home client, home cluster, away client, away cluster
	home := routedServer(t, "home", p[0], p[1], p[3])
	away := routedServer(t, "away", p[2], p[3], p[1])
	homeURL, awayURL := home.ClientURL(), away.ClientURL()
	testkit.WaitFor(t, 10*time.Second, "the two servers to route", func() bool { return home.NumRoutes() > 0 && away.NumRoutes() > 0 })

	connect := func(url, who string) *nats.Conn {
		nc, err := natsx.Connect(url, who, nats.UserInfo("svc", "svc"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	homing := connect(homeURL+","+awayURL, "homing")
	serveOn(homing, "homing")
	if alsoAway {
		serveOn(connect(awayURL, "staying"), "staying")
	}
	caller, err := natsx.Connect(awayURL, "caller", nats.UserInfo("caller", "caller"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(caller.Close)

	home.Shutdown()
	home.WaitForShutdown()
	testkit.WaitFor(t, 10*time.Second, "the homing connection to move away", func() bool {
		return homing.IsConnected() && homing.ConnectedUrl() == awayURL
	})
	home = routedServer(t, "home-again", p[0], p[1], p[3])
	testkit.WaitFor(t, 10*time.Second, "home to route again", func() bool { return home.NumRoutes() > 0 })

	calls := testkit.KeepCalling(t, 8, call(caller))
	testkit.WaitFor(t, natsx.HomeStable+4*natsx.HomeProbe, "the homing connection to go back home", func() bool {
		return homing.IsConnected() && homing.ConnectedUrl() == homeURL
	})
	atHome := answered.Load()
	testkit.WaitFor(t, 10*time.Second, "the responder back home to answer again", func() bool { return answered.Load() > atHome })
	calls.Stop("the homecoming")
}
