package agentgw_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/internal/stack/stacktest"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/msgcheck"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/agentgw"
)

func TestJoinNeedsNoCertificateButConnectDoes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	anon := e.client(nil)
	ctx := t.Context()

	token := e.joinToken("inst-join")
	_, csr := newCSR(t)
	resp, err := anon.Join(ctx, &agentv1.JoinRequest{Token: token, CsrDer: csr})
	if err != nil {
		t.Fatalf("join with a valid token: %v", err)
	}
	if resp.GetInstanceId() != "inst-join" || !strings.Contains(resp.GetCertificatePem(), "CERTIFICATE") || resp.GetNotAfter() == nil {
		t.Fatalf("join response = %v", resp)
	}
	if _, err := anon.Join(ctx, &agentv1.JoinRequest{Token: token, CsrDer: csr}); err == nil {
		t.Fatal("the same join token worked twice")
	} else if c := status.Code(err); c == codes.OK || c == codes.Internal || c == codes.Unavailable {
		t.Fatalf("reused token: %v, want a refusal", err)
	}
	if _, err := anon.Join(ctx, &agentv1.JoinRequest{Token: "fjt_not-a-token", CsrDer: csr}); err == nil {
		t.Fatal("joined with a made-up token")
	}

	stream, err := anon.Connect(ctx)
	if err == nil {
		_ = stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{}}})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("connect without a certificate: %v, want Unauthenticated", err)
	}
	if _, err := anon.Renew(ctx, &agentv1.RenewRequest{CsrDer: csr}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("renew without a certificate: %v, want Unauthenticated", err)
	}
}

func TestCertificatesFromAnotherCAFailTheHandshake(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	other, err := pki.GenerateCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := other.Issue(key.Public(), pki.AgentProfile("inst-forged", "vm-1", time.Now(), time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	forged := tlsCert(t, iss.PEM, key)

	_, csr := newCSR(t)
	// Even Join, which needs no certificate, fails: a certificate that is
	// given must verify, and the handshake is refused before any call.
	_, err = e.client(forged).Join(t.Context(), &agentv1.JoinRequest{Token: e.joinToken("inst-forged"), CsrDer: csr})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("join with a foreign certificate: %v, want the connection refused", err)
	}
	// At the TLS level: the gateway answers the certificate with an alert.
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: e.roots, Certificates: []tls.Certificate{*forged}, NextProtos: []string{"h2"},
	})
	if err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		_ = conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("TLS with a foreign certificate: %v, want a certificate alert", err)
	}
	stream, err := e.client(forged).Connect(t.Context())
	if err == nil {
		_ = stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{}}})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("connect with a foreign certificate: %v, want the connection refused", err)
	}
}

func TestCommandsReachTheConnectedAgentOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-cmd"
	ep := endpoints.AgentCommand.At(id)
	// A bootstrap is named after the VM it sets up (e.connect's agent
	// runs on the one its certificate names: its instance's).
	cmd := &agentv1.Command{Id: testkit.FakeVM(id), Action: &agentv1.Command_Bootstrap{Bootstrap: &agentv1.Bootstrap{InstanceName: "alpha"}}}

	_, err := rpc.Call(t.Context(), e.provisioner, ep, cmd)
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("command before the agent connected: %v, want no responders", err)
	}

	stream := e.connect(id)
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	// The agent of another VM of the instance (the one a re-provision
	// replaces, still going) is not given the new VM's bootstrap.
	forNext := &agentv1.Command{Id: "vm-next", Action: cmd.GetAction().(*agentv1.Command_Bootstrap)}
	if _, err := rpc.Call(t.Context(), e.provisioner, ep, forNext); !apierr.Is(err, apierr.KindUnavailable) || !strings.Contains(err.Error(), "vm-next") {
		t.Fatalf("bootstrap of another VM: %v, want unavailable naming the VM", err)
	}
	if _, err := rpc.Call(t.Context(), e.provisioner, ep, cmd); err != nil {
		t.Fatalf("command to a connected agent: %v", err)
	}
	got, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.GetCommand(), cmd) {
		t.Fatalf("agent got %v, want %v", got, cmd)
	}

	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Fatal("the stream went on after the agent closed it")
	}
	gone := e.observed.WaitFor(t, 10*time.Second, "disconnected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetDisconnected() != nil
	})
	// It names the stream it ends by the stream's start: its connect's time.
	hello := e.observed.WaitFor(t, time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	if start := gone.GetDisconnected().GetStreamStart(); start == nil || !proto.Equal(start, hello.GetTime()) {
		t.Errorf("the disconnect names the stream started at %v; it connected at %v", start, hello.GetTime())
	}
	_, err = rpc.Call(t.Context(), e.provisioner, ep, cmd)
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("command after the agent left: %v, want no responders", err)
	}
}

// TestAStoppingGatewayReportsNoDisconnects: the streams a stopping gateway
// ends report no disconnect (their agents reconnect to a gateway at once;
// the inventory marks an agent that cannot as disconnected once its
// heartbeats are missed), so a restart costs the inventory nothing; the
// gateway logs where its stop spent its time.
func TestAStoppingGatewayReportsNoDisconnects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-gateway-stops"
	stream := e.connect(id)
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	stacktest.Stop(t, e.stack) // returns once the gateway's queued events are sent
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("the stream as the gateway stopped: %v", err)
	}
	for _, ev := range e.observed.Events() {
		if ev.GetDisconnected() != nil {
			t.Fatalf("a stopping gateway reported a disconnect: %v", ev)
		}
	}
	// Its log says how many streams it ended and where the stop's time went.
	stopped := e.log.line(`msg="agent gateway stopped"`)
	for _, want := range []string{"streams=1 ", "streams_told_s=", "streams_ended_s=", "connections_closed_s=", "events_sent_s="} {
		if !strings.Contains(stopped, want) {
			t.Errorf("the stop's log line %q does not say %q", stopped, want)
		}
	}
}

func TestANewerStreamReplacesTheOlder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-twice"
	cert := e.join(id)
	older := e.connectAs(cert, &agentv1.Hello{AgentVersion: "first"})
	e.observed.WaitFor(t, 10*time.Second, "first connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetConnected().GetAgentVersion() == "first"
	})
	newer := e.connectAs(cert, &agentv1.Hello{AgentVersion: "second"})
	if _, err := older.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("older stream: %v, want it closed as replaced", err)
	}
	// Commands go to the agent once its newer stream is registered, as the
	// provisioner sends them only to an agent recorded as connected.
	e.observed.WaitFor(t, 10*time.Second, "second connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetConnected().GetAgentVersion() == "second"
	})
	cmd := &agentv1.Command{Id: "cmd-2", Action: &agentv1.Command_StopNode{StopNode: &agentv1.StopNode{}}}
	if _, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), cmd); err != nil {
		t.Fatal(err)
	}
	got, err := newer.Recv()
	if err != nil || got.GetCommand().GetId() != "cmd-2" {
		t.Fatalf("newer stream got %v, %v", got, err)
	}
	// The replaced stream reports no disconnect: the agent is still connected.
	time.Sleep(200 * time.Millisecond)
	for _, ev := range e.observed.Events() {
		if ev.GetDisconnected() != nil {
			t.Fatalf("a replaced stream reported a disconnect: %v", ev)
		}
	}
}

func TestLogLinesLandInTheStreamOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-logs"
	stream := e.connect(id)
	batch := func(seqs ...uint64) *agentv1.AgentMessage {
		var lines []*agentv1.LogLine
		for _, s := range seqs {
			lines = append(lines, &agentv1.LogLine{Seq: s, Source: "setup", Text: fmt.Sprintf("line %d", s)})
		}
		return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_Logs{Logs: &agentv1.LogBatch{Lines: lines}}}
	}
	if err := stream.Send(batch(1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	// After a reconnect the agent sends again what was not acknowledged.
	if err := stream.Send(batch(2, 3, 4)); err != nil {
		t.Fatal(err)
	}
	// A clean end: the gateway acknowledges the last lines, then ends.
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("the stream ended with %v, want a clean end", err)
	}
	acks := stream.Acks()
	if len(acks) < 2 || acks[0] != 0 || acks[len(acks)-1] != 4 || !slices.IsSorted(acks) {
		t.Fatalf("log acknowledgements %v, want 0 first (the gateway acknowledges), increasing, 4 last", acks)
	}
	// Acknowledged means stored: no waiting for the stream here.
	msgs := readLogsNow(t, e, id)
	if len(msgs) != 4 {
		t.Fatalf("%d lines stored when the gateway acknowledged line 4", len(msgs))
	}
	var texts []string
	for _, m := range msgs {
		line := &agentv1.LogLine{}
		if err := proto.Unmarshal(m.Data(), line); err != nil {
			t.Fatal(err)
		}
		texts = append(texts, line.GetText())
		if got, want := m.Headers().Get(bus.HeaderMsgID), fmt.Sprintf("%s-%d", id, line.GetSeq()); got != want {
			t.Errorf("message id %q, want %q", got, want)
		}
		if len(m.Headers()) != 1 {
			t.Errorf("headers %v: a log line carries only its message id", m.Headers())
		}
	}
	if want := []string{"line 1", "line 2", "line 3", "line 4"}; !slices.Equal(texts, want) {
		t.Fatalf("stream holds %q, want %q", texts, want)
	}
}

// readLogs reads the instance's log lines from the stream and checks there
// are exactly n.
func readLogs(t *testing.T, e *env, id string, n int) []jetstream.Msg {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := e.js.Stream(ctx, subjects.AgentLogsStream)
		if err != nil {
			t.Fatal(err)
		}
		st, err := info.Info(ctx, jetstream.WithSubjectFilter(subjects.AgentLogs(id)))
		if err != nil {
			t.Fatal(err)
		}
		if int(st.State.Subjects[subjects.AgentLogs(id)]) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := readLogsNow(t, e, id)
	if len(out) != n {
		t.Fatalf("%d log lines in the stream for %s, want %d", len(out), id, n)
	}
	return out
}

// readLogsNow reads the instance's log lines in the stream now.
func readLogsNow(t testing.TB, e *env, id string) []jetstream.Msg {
	t.Helper()
	ctx := t.Context()
	c, err := e.js.OrderedConsumer(ctx, subjects.AgentLogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AgentLogs(id)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for {
		m, err := c.Next(jetstream.FetchMaxWait(500 * time.Millisecond))
		if err != nil {
			break
		}
		out = append(out, m)
	}
	return out
}

func TestTheInstanceIsTheCertificates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id, other = "inst-me", "inst-other"
	sub, err := e.nc.SubscribeSync(subjects.AgentStatusAll())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	cert := e.join(id)
	// A hello that names another VM than the certificate's is refused.
	liar := e.connectAs(cert, &agentv1.Hello{AgentVersion: "test", VmId: testkit.FakeVM(other)})
	if _, err := liar.Recv(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "hello.vmId") {
		t.Fatalf("a hello naming another VM: %v, want permission denied naming hello.vmId", err)
	}
	// One that names none runs on the certificate's.
	stream := e.connectAs(cert, &agentv1.Hello{AgentVersion: "test"})
	if c := e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool { return ev.GetConnected() != nil }); c.GetConnected().GetVmId() != testkit.FakeVM(id) {
		t.Errorf("connected from VM %q, want the certificate's %q", c.GetConnected().GetVmId(), testkit.FakeVM(id))
	}
	for _, m := range []*agentv1.AgentMessage{
		{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{DiskUsedBytes: 42, AgentVersion: "test", NodeUrl: "https://" + strings.Repeat("n", 10000)}}},
		{Body: &agentv1.AgentMessage_Progress{Progress: &agentv1.Progress{CommandId: "c", Step: "done", Status: "failed", Message: "exit 1: \x00\x01"}}},
		{Body: &agentv1.AgentMessage_Logs{Logs: &agentv1.LogBatch{Lines: []*agentv1.LogLine{{Seq: 7, Text: "hello"}}}}},
	} {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	// A NUL byte a program printed reaches the inventory as U+FFFD: the
	// inventory refuses NUL in any request.
	if p := e.observed.WaitFor(t, 10*time.Second, "progress", func(ev *agentv1.AgentEvent) bool { return ev.GetProgress() != nil }); p.GetProgress().GetMessage() != "exit 1: \uFFFD\x01" {
		t.Errorf("progress message %q", p.GetProgress().GetMessage())
	}
	hb := e.observed.WaitFor(t, 10*time.Second, "heartbeat", func(ev *agentv1.AgentEvent) bool { return ev.GetHeartbeat() != nil })
	if hb.GetHeartbeat().GetDiskUsedBytes() != 42 {
		t.Errorf("heartbeat = %v", hb)
	}
	// A report's texts are bounded: they end up in the instance's record.
	if u := hb.GetHeartbeat().GetNodeUrl(); len(u) > 2048 || !strings.HasSuffix(u, msgcheck.CutMarker) {
		t.Errorf("a 10 kB node URL reached the inventory as %d bytes", len(u))
	}
	for _, ev := range e.observed.Events() {
		if ev.GetInstanceId() != id {
			t.Errorf("event for %q, want %q: %v", ev.GetInstanceId(), id, ev)
		}
	}
	for range 3 { // connected, heartbeat, progress
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != subjects.AgentStatus(id) {
			t.Errorf("status published on %s, want %s", m.Subject, subjects.AgentStatus(id))
		}
	}
	readLogs(t, e, id, 1)
	readLogs(t, e, other, 0)
	_, err = rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(other), &agentv1.Command{Id: "x"})
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("a command for the other instance: %v, want no responders", err)
	}
}

func TestAStreamEndsWhenItsCertificateExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{agentCertTTL: 2 * time.Second})
	const id = "inst-expiring"
	cert := e.join(id)
	stream := e.connectAs(cert, &agentv1.Hello{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("stream ended with %v, want Unauthenticated", err)
		}
		if left := time.Until(cert.Leaf.NotAfter); left > 100*time.Millisecond {
			t.Fatalf("stream ended %s before the certificate expired", left)
		}
	case <-ctx.Done():
		t.Fatal("the stream outlived its certificate")
	}
	e.observed.WaitFor(t, 10*time.Second, "disconnected", func(ev *agentv1.AgentEvent) bool {
		return strings.Contains(ev.GetDisconnected().GetReason(), "expired")
	})
}

func TestRenewKeepsTheIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-renew"
	cert := e.join(id)
	key, csr := newCSR(t)
	resp, err := e.client(cert).Renew(t.Context(), &agentv1.RenewRequest{CsrDer: csr})
	if err != nil {
		t.Fatal(err)
	}
	renewed := tlsCert(t, []byte(resp.GetCertificatePem()), key)
	if got, err := pki.AgentInstanceID(renewed.Leaf); err != nil || got != id {
		t.Fatalf("renewed certificate is for %q (%v), want %q", got, err, id)
	}
	e.connectAs(renewed, &agentv1.Hello{AgentVersion: "renewed"})
	e.observed.WaitFor(t, 10*time.Second, "connected with the renewed certificate", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected().GetAgentVersion() == "renewed"
	})
}

// TestAnOldCertificateCannotTakeTheAgentsPlace: once the agent connects
// with its renewed certificate, a copy of the one it renewed is refused and
// the agent's stream is undisturbed; a deprovisioned instance's agent can
// neither connect nor renew.
func TestAnOldCertificateCannotTakeTheAgentsPlace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-stolen"
	old := e.join(id)
	first := e.connectAs(old, &agentv1.Hello{AgentVersion: "first"})
	e.observed.WaitFor(t, 10*time.Second, "first connected", func(ev *agentv1.AgentEvent) bool { return ev.GetConnected().GetAgentVersion() == "first" })
	key, csr := newCSR(t)
	resp, err := e.client(old).Renew(t.Context(), &agentv1.RenewRequest{CsrDer: csr})
	if err != nil {
		t.Fatal(err)
	}
	renewed := tlsCert(t, []byte(resp.GetCertificatePem()), key)
	current := e.connectAs(renewed, &agentv1.Hello{AgentVersion: "renewed"})
	if _, err := first.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("the stream with the renewed certificate: %v, want it replaced", err)
	}
	e.observed.WaitFor(t, 10*time.Second, "connected with the renewed certificate", func(ev *agentv1.AgentEvent) bool { return ev.GetConnected().GetAgentVersion() == "renewed" })

	stolen := e.connectAs(old, &agentv1.Hello{AgentVersion: "thief"})
	if _, err := stolen.Recv(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "newer certificate") {
		t.Fatalf("a copy of the renewed certificate: %v, want permission denied", err)
	}
	if _, err := e.client(old).Renew(t.Context(), &agentv1.RenewRequest{CsrDer: csr}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("renewing with the renewed certificate: %v", err)
	}
	cmd := &agentv1.Command{Id: "cmd-after-theft", Action: &agentv1.Command_StopNode{StopNode: &agentv1.StopNode{}}}
	if _, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), cmd); err != nil {
		t.Fatal(err)
	}
	if got, err := current.Recv(); err != nil || got.GetCommand().GetId() != "cmd-after-theft" {
		t.Fatalf("the agent's stream after the attempt: %v, %v", got, err)
	}

	e.observed.Set(&inventoryv1.Instance{Id: id, State: string(vocab.StateDeprovisioned)})
	again := e.connectAs(renewed, &agentv1.Hello{AgentVersion: "after"})
	if _, err := again.Recv(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "deprovisioned") {
		t.Fatalf("connecting for a deprovisioned instance: %v", err)
	}
	// Even a stream the checks refuse heard first that this gateway
	// acknowledges lines: an agent whose stream waits on a slow check never
	// takes it for an older gateway and forgets lines it sent meanwhile.
	if acks := again.Acks(); len(acks) != 1 || acks[0] != 0 {
		t.Errorf("LogAcks on a refused stream: %v, want [0] before the refusal", acks)
	}
	if _, err := e.client(renewed).Renew(t.Context(), &agentv1.RenewRequest{CsrDer: csr}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("renewing for a deprovisioned instance: %v", err)
	}
}

// TestLinesWaitOnTheStreamWhileJetStreamCannotStoreThem: while the agent
// log stream cannot store a line (here it is gone for a moment; in a
// cluster, a stream electing a leader), the gateway publishes it again
// instead of ending the agent's stream, and the agent's lines land, in
// order, once it can.
func TestLinesWaitOnTheStreamWhileJetStreamCannotStoreThem(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-waiting"
	stream := e.connect(id)
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool { return ev.GetConnected() != nil })
	admin, err := jetstream.New(e.bus.Unrestricted(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := admin.Stream(t.Context(), subjects.AgentLogsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteStream(t.Context(), subjects.AgentLogsStream); err != nil {
		t.Fatal(err)
	}
	line := func(seq uint64) *agentv1.AgentMessage {
		return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_Logs{Logs: &agentv1.LogBatch{Lines: []*agentv1.LogLine{
			{Seq: seq, Source: "setup", Text: fmt.Sprintf("line %d", seq)}}}}}
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if err := stream.Send(line(seq)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // publishes fail, and are tried again
	if _, err := admin.CreateStream(t.Context(), cfg.CachedInfo().Config); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(line(4)); err != nil {
		t.Fatal(err)
	}
	var texts []string
	for deadline := time.Now().Add(30 * time.Second); len(texts) < 4; {
		if time.Now().After(deadline) {
			t.Fatalf("stored %q within 30 s of the stream's return, want 4 lines", texts)
		}
		texts = texts[:0]
		for _, m := range readLogsNow(t, e, id) {
			l := &agentv1.LogLine{}
			if err := proto.Unmarshal(m.Data(), l); err != nil {
				t.Fatal(err)
			}
			texts = append(texts, l.GetText())
		}
	}
	if want := []string{"line 1", "line 2", "line 3", "line 4"}; !slices.Equal(texts, want) {
		t.Errorf("stored %q, want %q", texts, want)
	}
	// The agent's stream is still the one it opened: a command reaches it.
	cmd := &agentv1.Command{Id: "after-the-wait", Action: &agentv1.Command_StopNode{StopNode: &agentv1.StopNode{}}}
	if _, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), cmd); err != nil {
		t.Fatal(err)
	}
	if got, err := stream.Recv(); err != nil || got.GetCommand().GetId() != "after-the-wait" {
		t.Fatalf("the agent's stream after the wait: %v, %v", got, err)
	}
	if acks := stream.Acks(); len(acks) == 0 || acks[len(acks)-1] != 4 {
		t.Errorf("LogAcks %v: want the last for line 4", acks)
	}
}

// TestTheStreamsGaugeCountsOpenStreams: flotilla_agentgw_streams goes up
// when an agent's stream opens, stays when a newer stream replaces it, and
// goes down when it ends; each stream's certificate check is counted. Not
// parallel: the metrics are the process's, and parallel tests wait until
// this one is over.
func TestTheStreamsGaugeCountsOpenStreams(t *testing.T) {
	e := newEnv(t, envOptions{})
	before := agentgw.OpenStreams()
	checked, turns := agentgw.ChecksAnswered()
	const id = "inst-gauge"
	cert := e.join(id)
	first := e.connectAs(cert, &agentv1.Hello{AgentVersion: "first"})
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetConnected().GetAgentVersion() == "first"
	})
	if got := agentgw.OpenStreams(); got != before+1 {
		t.Fatalf("with a stream open the gauge is %v, want %v", got, before+1)
	}
	second := e.connectAs(cert, &agentv1.Hello{AgentVersion: "second"})
	if _, err := first.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("the replaced stream: %v", err)
	}
	e.observed.WaitFor(t, 10*time.Second, "connected again", func(ev *agentv1.AgentEvent) bool {
		return ev.GetConnected().GetAgentVersion() == "second"
	})
	if got := agentgw.OpenStreams(); got != before+1 {
		t.Fatalf("with the stream replaced the gauge is %v, want %v", got, before+1)
	}
	if c, tu := agentgw.ChecksAnswered(); c != checked+2 || tu != turns+2 {
		t.Errorf("checks answered %d and turns %d after two streams, want %d and %d", c, tu, checked+2, turns+2)
	}
	if err := second.CloseSend(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for agentgw.OpenStreams() != before {
		if time.Now().After(deadline) {
			t.Fatalf("after the stream ended the gauge is %v, want %v", agentgw.OpenStreams(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestChecksOfStreamsArrivingTogetherGoInOneBatch: the certificate checks
// of streams that arrive while the CA is busy go in one agent.check-many;
// each stream gets its own answer (a deleted instance's agent is refused,
// the others are served). Not parallel: it reads the process's metrics.
func TestChecksOfStreamsArrivingTogetherGoInOneBatch(t *testing.T) {
	e := newEnv(t, envOptions{})
	const agents = 12
	certs := make([]*tls.Certificate, agents)
	for i := range certs {
		certs[i] = e.join(fmt.Sprintf("inst-batch-%d", i))
	}
	e.observed.Remove("inst-batch-0")
	batches, checks := agentgw.CheckBatches()
	release := e.gw.HoldChecks()
	streams := make([]*agentStream, agents)
	for i, cert := range certs {
		streams[i] = e.connectAs(cert, &agentv1.Hello{AgentVersion: "test", VmId: testkit.FakeVM(fmt.Sprintf("inst-batch-%d", i))})
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.gw.QueuedChecks() < agents {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d checks queued", e.gw.QueuedChecks(), agents)
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	if _, err := streams[0].Recv(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "was deleted") {
		t.Errorf("the deleted instance's agent: %v; want permission denied, the instance was deleted", err)
	}
	for i := 1; i < agents; i++ {
		id := fmt.Sprintf("inst-batch-%d", i)
		e.observed.WaitFor(t, 10*time.Second, "connected "+id, func(ev *agentv1.AgentEvent) bool {
			return ev.GetInstanceId() == id && ev.GetConnected() != nil
		})
	}
	if b, c := agentgw.CheckBatches(); b != batches+1 || c != checks+agents {
		t.Errorf("%d batches carried %v checks, want 1 carrying %d", b-batches, c-checks, agents)
	}
}

// TestEventsOfAgentsArrivingTogetherGoInOneBatch: the connects of agents
// that arrive while the inventory is busy go to it in one
// lifecycle.observe-many, and each agent's events reach it in the order
// the agent sent them.
func TestEventsOfAgentsArrivingTogetherGoInOneBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const agents = 20
	ids := make([]string, agents)
	certs := make([]*tls.Certificate, agents)
	for i := range certs {
		ids[i] = fmt.Sprintf("inst-events-%d", i)
		certs[i] = e.join(ids[i])
	}
	release := e.gw.HoldEvents()
	steps := []string{"running-setup", "installing", "starting"}
	for i, cert := range certs {
		s := e.connectAs(cert, &agentv1.Hello{AgentVersion: "test", VmId: testkit.FakeVM(ids[i])})
		for _, step := range steps {
			if err := s.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Progress{Progress: &agentv1.Progress{CommandId: "c", Step: step, Status: "started"}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.gw.QueuedEvents() < agents { // each stream's connect; its progress waits behind it
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connects queued", e.gw.QueuedEvents(), agents)
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	for _, id := range ids {
		e.observed.WaitFor(t, 10*time.Second, "the last progress of "+id, func(ev *agentv1.AgentEvent) bool {
			return ev.GetInstanceId() == id && ev.GetProgress().GetStep() == steps[len(steps)-1]
		})
	}
	connects := 0
	for _, batch := range e.observed.Batches() {
		n := 0
		for _, ev := range batch {
			if ev.GetConnected() != nil {
				n++
			}
		}
		connects = max(connects, n)
	}
	if connects != agents {
		t.Errorf("the most connects in one batch: %d, want all %d", connects, agents)
	}
	for _, id := range ids {
		var got []string
		for _, ev := range e.observed.Events() {
			if ev.GetInstanceId() != id {
				continue
			}
			if ev.GetConnected() != nil {
				got = append(got, "connected")
			} else if p := ev.GetProgress(); p != nil {
				got = append(got, p.GetStep())
			}
		}
		if want := append([]string{"connected"}, steps...); !slices.Equal(got, want) {
			t.Errorf("%s's events reached the inventory as %v, want %v", id, got, want)
		}
	}
}

// TestAReleasedAgentThatHoldsOnIsCutOff: an agent told of its release
// (agent.v1.Release) that does not close its stream has it ended by the
// gateway after the grace, and the provisioner's call returns only then:
// whatever the agent does, no stream of it outlives the release.
func TestAReleasedAgentThatHoldsOnIsCutOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-released"
	stream := e.connectAs(e.join(id), &agentv1.Hello{AgentVersion: "test", Features: []string{string(vocab.AgentFeatureRelease)}})
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	got := make(chan *agentv1.GatewayMessage, 1)
	ended := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				ended <- err
				return
			}
			if m.GetCommand() != nil {
				got <- m
			}
		}
	}()
	start := time.Now()
	cmd := &agentv1.Command{Id: "release-vm", Action: &agentv1.Command_Release{Release: &agentv1.Release{Reason: "the instance is deprovisioned"}}}
	if _, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), cmd, rpc.Timeout(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	select {
	case m := <-got:
		if m.GetCommand().GetRelease().GetReason() != "the instance is deprovisioned" {
			t.Fatalf("the agent got %v", m)
		}
	default:
		t.Fatal("the agent was not told of its release")
	}
	select {
	case err := <-ended:
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "released (the instance is deprovisioned)") {
			t.Fatalf("the stream ended with %v, want it ended as released", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the released agent's stream was not ended")
	}
	if took < 9*time.Second {
		t.Errorf("the release was answered after %v, before the agent's grace ran out", took)
	}
	e.observed.WaitFor(t, 10*time.Second, "disconnected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && strings.Contains(ev.GetDisconnected().GetReason(), "released")
	})
}

// TestAnAgentThatDoesNotKnowReleasesIsCutOffAtOnce: an agent whose hello
// does not name the feature "release" (one from before it) is not sent the
// command it would only log: its stream ends at once.
func TestAnAgentThatDoesNotKnowReleasesIsCutOffAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-released-old"
	stream := e.connect(id)
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	start := time.Now()
	cmd := &agentv1.Command{Id: "release-vm", Action: &agentv1.Command_Release{Release: &agentv1.Release{Reason: "the instance is deleted"}}}
	if _, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), cmd, rpc.Timeout(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the release of an agent that does not know releases took %v", took)
	}
	m, err := stream.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "the agent does not act on releases") {
		t.Fatalf("the stream gave %v, %v; want it ended as released, with no command", m, err)
	}
}

// TestAnAgentThatCannotUpgradeItselfIsNotSentAnUpgrade: an agent whose
// hello does not name the feature "upgrade" (one from before it) would
// only log the command: it is refused as a conflict naming the agent's
// version and the way out, and the stream goes on. So is a configuration
// refresh for one whose hello does not name "refresh-configuration".
func TestAnAgentThatCannotUpgradeItselfIsNotSentAnUpgrade(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const id = "inst-upgrade-old"
	stream := e.connect(id)
	e.observed.WaitFor(t, 10*time.Second, "connected", func(ev *agentv1.AgentEvent) bool {
		return ev.GetInstanceId() == id && ev.GetConnected() != nil
	})
	cmd := &agentv1.Command{Id: "upgrade-1", Action: &agentv1.Command_UpgradeAgent{UpgradeAgent: &agentv1.UpgradeAgent{
		Version: "0.2.0", Url: "http://127.0.0.1:1/agent", Sha256: strings.Repeat("0f", 32)}}}
	_, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), cmd)
	if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), "the agent (version test) predates upgrading itself: reprovision the instance") {
		t.Fatalf("an upgrade for an agent without the feature: %v", err)
	}
	refresh := &agentv1.Command{Id: "refresh-1", Action: &agentv1.Command_RefreshConfiguration{RefreshConfiguration: &agentv1.RefreshConfiguration{}}}
	_, err = rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), refresh)
	if !apierr.Is(err, apierr.KindConflict) || !strings.Contains(err.Error(), "the agent (version test) predates refreshing its configuration: upgrade it") {
		t.Fatalf("a configuration refresh for an agent without the feature: %v", err)
	}
	// The stream is still the agent's: a command it knows reaches it.
	stop := &agentv1.Command{Id: "stop-1", Action: &agentv1.Command_StopNode{StopNode: &agentv1.StopNode{}}}
	if _, err := rpc.Call(t.Context(), e.provisioner, endpoints.AgentCommand.At(id), stop); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetCommand().GetId() != "stop-1" {
		t.Fatalf("after the refused upgrade the agent got %v, %v; want stop-1", m, err)
	}
}
