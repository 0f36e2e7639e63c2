package agentgw_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"flotilla.dev/flotilla/agent"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/internal/stack/stacktest"
)

// TestAgentsResumeTheirTLSSessionWithAnyGateway: an agent that connects
// again to another gateway (one restarted, or another behind the same
// address) resumes its TLS session, since the gateways seal their session
// tickets with the keys the CA gives them all, and its stream works. The
// certificate a resumed session carries is checked like any other: once
// the agent connected with a renewed certificate, a session of the one it
// renewed is refused. And the agent's session cache keeps the sessions of
// the certificate it holds only.
func TestAgentsResumeTheirTLSSessionWithAnyGateway(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	other := stacktest.Start(t, stacktest.OnBus(stack.Config{Services: []string{subjects.AgentGW}, Log: testLog(t)}, e.bus))
	const id = "inst-resumes"
	var held atomic.Pointer[tls.Certificate]
	held.Store(e.join(id))
	sessions := agent.NewSessionCache(held.Load)

	first, resumed := e.openStream(e.addr, held.Load, sessions, "first")
	if resumed {
		t.Fatal("the first stream resumed a session")
	}
	first.CloseSend()
	second, resumed := e.openStream(other.AgentAddr, held.Load, sessions, "second")
	if !resumed {
		t.Fatal("the stream to the other gateway did not resume the session")
	}
	e.observed.WaitFor(t, 10*time.Second, "connected through the resumed session", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected().GetAgentVersion() == "second"
	})
	second.CloseSend()

	// Renewed: the sessions of the old certificate are dropped.
	old := held.Load()
	oldSessions := agent.NewSessionCache(func() *tls.Certificate { return old })
	if _, resumed := e.openStream(e.addr, func() *tls.Certificate { return old }, oldSessions, "old"); resumed {
		t.Fatal("a new cache resumed a session")
	}
	key, csr := newCSR(t)
	resp, err := e.client(old).Renew(t.Context(), &agentv1.RenewRequest{CsrDer: csr})
	if err != nil {
		t.Fatal(err)
	}
	held.Store(tlsCert(t, []byte(resp.GetCertificatePem()), key))
	if _, resumed := e.openStream(other.AgentAddr, held.Load, sessions, "renewed"); resumed {
		t.Fatal("the renewed certificate's stream resumed a session of the certificate before")
	}
	e.observed.WaitFor(t, 10*time.Second, "connected with the renewed certificate", func(ev *agentv1.AgentEvent) bool {
		return ev.GetConnected().GetAgentVersion() == "renewed"
	})
	stale, resumed := e.openStream(e.addr, func() *tls.Certificate { return old }, oldSessions, "stale")
	if !resumed {
		t.Fatal("the old certificate's session did not resume")
	}
	if _, err := stale.Recv(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "newer certificate") {
		t.Fatalf("a resumed session of the renewed certificate: %v, want permission denied", err)
	}
}

// openStream opens a stream to the gateway at addr as an agent does
// (agent.GatewayTLSConfig, with sessions), says hello as version and reads
// the gateway's first message, by when the TLS session ticket has come; it
// reports whether the stream's TLS session was resumed.
func (e *env) openStream(addr string, cert func() *tls.Certificate, sessions tls.ClientSessionCache, version string) (*agentStream, bool) {
	e.t.Helper()
	cfg := agent.GatewayTLSConfig(e.roots, []*x509.Certificate{e.ca.GatewayAuthority().Certificate()}, cert, sessions)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(e.t.Context())
	e.t.Cleanup(cancel)
	stream, err := agentv1.NewAgentGatewayClient(conn).Connect(ctx)
	if err == nil {
		err = stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{AgentVersion: version}}})
	}
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		e.t.Fatalf("the gateway's first message to %s: %v", version, err)
	}
	p, ok := peer.FromContext(stream.Context())
	if !ok {
		e.t.Fatal("no peer on the stream")
	}
	return &agentStream{AgentGateway_ConnectClient: stream}, p.AuthInfo.(credentials.TLSInfo).State.DidResume
}
