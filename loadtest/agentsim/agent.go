package agentsim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/agent"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/loadtest/apiclient"
)

// Stream limits, as the real agent's.
const (
	// connectTimeout bounds opening a stream and saying hello.
	connectTimeout = 15 * time.Second
	// closeTimeout bounds a clean close: the gateway handles what it was
	// sent, then ends the stream.
	closeTimeout = 10 * time.Second
	// finalTimeout bounds delivering the last lines after Duration, across
	// reconnects.
	finalTimeout = 60 * time.Second
	// logBatchLines bounds one LogBatch.
	logBatchLines = 500
	// version is the agent version simulated agents report.
	version = "agentsim"
)

// lineText is the text of simulated log line seq: made again from seq
// whenever it is (re)sent, so no line is kept in memory.
func lineText(seq uint64) string { return "agentsim line " + strconv.FormatUint(seq, 10) }

// fleet is what every simulated agent shares: the gateway, its trust, the
// rates and the counters.
type fleet struct {
	cfg Config

	gwOnce     sync.Mutex
	gwAddr     string
	gwCAPEM    string
	roots      *x509.CertPool
	gatewayCAs []*x509.Certificate
	joinConn   *grpc.ClientConn // Join needs no client certificate: one connection serves every join
	// opening holds a turn for each agent opening its stream (nil: no
	// bound; see Config.Opening).
	opening chan struct{}

	// logStart and logEnd are when lines are made; set before steady.
	logStart, logEnd time.Time
	steady, ending   atomic.Bool

	expected, connected                        atomic.Int64
	heartbeats, resent, disconnects, joinFails atomic.Int64

	mu           sync.Mutex
	streamErrors map[string]int
	outageStart  time.Time
	outages      int
	longest      time.Duration
}

func newFleet(cfg Config) *fleet {
	f := &fleet{cfg: cfg}
	if cfg.Opening > 0 {
		f.opening = make(chan struct{}, cfg.Opening)
	}
	return f
}

// takeTurn waits for a turn to open a stream (at once without a bound);
// the returned function ends it, and may be called more than once.
func (f *fleet) takeTurn(ctx context.Context) (func(), error) {
	if f.opening == nil {
		return func() {}, nil
	}
	select {
	case f.opening <- struct{}{}:
		return sync.OnceFunc(func() { <-f.opening }), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// gateway takes the agent gateway's address and CA bundle from the first
// join token; every later token must name the same.
func (f *fleet) gateway(tok joinToken) error {
	f.gwOnce.Lock()
	defer f.gwOnce.Unlock()
	if f.joinConn != nil {
		if tok.AgentGatewayAddr != f.gwAddr || tok.CACertificatePEM != f.gwCAPEM {
			return fmt.Errorf("join token names agent gateway %s and another CA bundle than the first one (%s)", tok.AgentGatewayAddr, f.gwAddr)
		}
		return nil
	}
	host, _, err := net.SplitHostPort(tok.AgentGatewayAddr)
	if err != nil {
		return fmt.Errorf("agentGatewayAddr %q: %w", tok.AgentGatewayAddr, err)
	}
	if err := apiclient.Loopback("agentGatewayAddr", host); err != nil {
		return err
	}
	if f.roots, err = pki.CertPool([]byte(tok.CACertificatePEM)); err != nil {
		return fmt.Errorf("caCertificatePem: %w", err)
	}
	certs, err := pki.ParseCertificatesPEM([]byte(tok.CACertificatePEM))
	if err != nil {
		return fmt.Errorf("caCertificatePem: %w", err)
	}
	f.gatewayCAs = pki.GatewayCAs(certs)
	conn, err := f.dial(tok.AgentGatewayAddr, credentials.NewTLS(agent.GatewayTLSConfig(f.roots, f.gatewayCAs, func() *tls.Certificate { return nil }, nil)))
	if err != nil {
		return err
	}
	f.gwAddr, f.gwCAPEM, f.joinConn = tok.AgentGatewayAddr, tok.CACertificatePEM, conn
	return nil
}

// dial makes a client of the gateway as the agent does, with small
// buffers: thousands of these live in one process.
func (f *fleet) dial(addr string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(agent.GatewayKeepalive),
		grpc.WithReadBufferSize(8<<10),
		grpc.WithWriteBufferSize(8<<10),
	)
}

func (f *fleet) close() {
	if f.joinConn != nil {
		_ = f.joinConn.Close()
	}
}

// up counts a stream opened; the last agent back ends an outage.
func (f *fleet) up() {
	if f.connected.Add(1) < f.expected.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.outageStart.IsZero() {
		f.longest = max(f.longest, time.Since(f.outageStart))
		f.outageStart = time.Time{}
	}
}

// down counts a stream ended; while agents are meant to be connected, the
// first one down starts an outage.
func (f *fleet) down() {
	f.connected.Add(-1)
	if !f.steady.Load() || f.ending.Load() {
		return
	}
	f.disconnects.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.outageStart.IsZero() {
		f.outageStart = time.Now()
		f.outages++
	}
}

// maxStreamErrors is how many kinds of stream error a Summary counts apart.
const maxStreamErrors = 20

// streamFailed counts why a stream failed, while agents are meant to be
// connected.
func (f *fleet) streamFailed(err error) {
	if err == nil || !f.steady.Load() || f.ending.Load() {
		return
	}
	why := err.Error()
	if len(why) > 160 {
		why = why[:160]
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.streamErrors == nil {
		f.streamErrors = map[string]int{}
	}
	if _, ok := f.streamErrors[why]; !ok && len(f.streamErrors) >= maxStreamErrors {
		why = "other"
	}
	f.streamErrors[why]++
}

// due is how many lines an agent has made by now: LogRate per second from
// logStart until logEnd.
func (f *fleet) due(now time.Time) uint64 {
	if f.cfg.LogRate == 0 || !f.steady.Load() {
		return 0
	}
	if now.After(f.logEnd) {
		now = f.logEnd
	}
	if now.Before(f.logStart) {
		return 0
	}
	return uint64(math.Floor(f.cfg.LogRate * now.Sub(f.logStart).Seconds()))
}

// simAgent is one simulated agent.
type simAgent struct {
	f    *fleet
	id   string
	name string

	// Set by the setup watcher.
	minted  bool
	failed  bool
	running atomic.Bool
	joined  atomic.Bool

	// Set at join.
	vmID  string
	creds credentials.TransportCredentials

	// The agent's own, touched only by its goroutine: the bootstrap
	// command it completed, and its log lines (confirmed ≤ sent ≤ made).
	completed, nodeURL string
	sent, confirmed    uint64
	highest            atomic.Uint64 // the highest line ever sent
}

// join exchanges tok and a CSR for a certificate, through the gateway's
// Join as a real agent does, retrying while the gateway cannot be reached.
func (a *simAgent) join(ctx context.Context, tok joinToken) error {
	f := a.f
	if err := f.gateway(tok); err != nil {
		return err
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key, "flotilla-agent")
	if err != nil {
		return err
	}
	bo := agent.NewBackoff()
	for attempt := 1; ; attempt++ {
		jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := agentv1.NewAgentGatewayClient(f.joinConn).Join(jctx, &agentv1.JoinRequest{Token: tok.Token, CsrDer: csr, AgentVersion: version})
		cancel()
		if err == nil {
			cert, err := agent.CertificateFor([]byte(resp.GetCertificatePem()), key, f.roots, time.Now())
			if err != nil {
				return fmt.Errorf("certificate from the gateway: %w", err)
			}
			a.vmID = tok.VMID
			held := func() *tls.Certificate { return cert }
			a.creds = credentials.NewTLS(agent.GatewayTLSConfig(f.roots, f.gatewayCAs, held, agent.NewSessionCache(held)))
			return nil
		}
		if !agent.Transient(err) || attempt == 5 || ctx.Err() != nil {
			return fmt.Errorf("join: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(bo.Next()):
		}
	}
}

// run keeps a stream to the gateway until stop is closed and its last
// lines are delivered (or finalTimeout passes), reconnecting with the
// agent's jittered backoff.
func (a *simAgent) run(ctx context.Context, stop <-chan struct{}) {
	bo := agent.NewBackoff()
	var final <-chan time.Time
	for {
		start := time.Now()
		done, err := a.session(ctx, stop)
		if done || ctx.Err() != nil {
			return
		}
		a.f.streamFailed(err)
		if final == nil {
			select {
			case <-stop:
				final = time.After(finalTimeout)
			default:
			}
		}
		if time.Since(start) >= a.f.cfg.Heartbeat {
			bo.Reset()
		}
		select {
		case <-ctx.Done():
			return
		case <-final:
			return
		case <-time.After(bo.Next()):
		}
	}
}

// session runs one stream: hello and a heartbeat, then heartbeats, lines
// and answers to commands until the stream breaks (false) or stop asks it
// to close cleanly with every line delivered (true).
func (a *simAgent) session(ctx context.Context, stop <-chan struct{}) (bool, error) {
	f := a.f
	endTurn, err := f.takeTurn(ctx)
	if err != nil {
		return false, err
	}
	defer endTurn()
	conn, err := f.dial(f.gwAddr, a.creds)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opening := time.AfterFunc(connectTimeout, cancel)
	stream, err := agentv1.NewAgentGatewayClient(conn).Connect(sctx)
	if err == nil {
		err = stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{
			AgentVersion: version, VmId: a.vmID, CompletedCommandId: a.completed,
			Features: []string{string(vocab.AgentFeatureRelease)}}}})
	}
	if err == nil {
		err = a.heartbeat(stream)
	}
	endTurn()
	if !opening.Stop() || err != nil {
		if err = errors.Join(err, sctx.Err()); err == nil {
			err = fmt.Errorf("not open within %v", connectTimeout)
		}
		return false, fmt.Errorf("open the stream: %w", err)
	}
	f.up()
	defer f.down()

	cmds := make(chan *agentv1.Command, 4)
	// A gateway that acknowledges lines says so first (LogAck 0); then a
	// line counts as stored once acknowledged, as the real agent has it.
	var acks atomic.Bool
	var acked atomic.Uint64
	recvErr := agent.Receive(stream, func(m *agentv1.GatewayMessage) {
		if la := m.GetLogAck(); la != nil {
			acks.Store(true)
			if la.GetSeq() > acked.Load() {
				acked.Store(la.GetSeq())
			}
		}
		if c := m.GetCommand(); c != nil {
			select {
			case cmds <- c:
			default: // the provisioner sends it again
			}
		}
	})

	// Every line not known to be stored goes again.
	f.resent.Add(int64(a.sent - a.confirmed))
	a.sent = a.confirmed
	if a.completed != "" && !a.running.Load() {
		if err := a.progress(stream, a.completed, vocab.StepDone, vocab.ProgressSucceeded, a.nodeURL); err != nil {
			return false, err
		}
	}
	tick := f.cfg.Heartbeat
	if f.cfg.LogRate > 0 {
		tick = min(tick, time.Second)
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	nextBeat := time.Now().Add(f.cfg.Heartbeat)
	mark := a.sent // what had been sent at the previous heartbeat
	for {
		if err := a.sendLines(stream); err != nil {
			return false, err
		}
		select {
		case now := <-ticker.C:
			if now.Before(nextBeat) {
				continue
			}
			nextBeat = now.Add(f.cfg.Heartbeat)
			select {
			case err := <-recvErr:
				return false, err
			default:
			}
			if acks.Load() {
				a.confirmed = max(a.confirmed, min(acked.Load(), a.sent))
			} else {
				// An older gateway's: still healthy a whole interval after
				// they were sent, it has those lines.
				a.confirmed, mark = mark, a.sent
			}
			if err := a.heartbeat(stream); err != nil {
				return false, err
			}
		case c := <-cmds:
			if c.GetRelease() != nil {
				// The instance let the agent go (its deprovision): done, as
				// a real agent is.
				return a.closeCleanly(stream, recvErr)
			}
			if err := a.command(stream, c); err != nil {
				return false, err
			}
		case err := <-recvErr:
			return false, err
		case <-stop:
			return a.closeCleanly(stream, recvErr)
		}
	}
}

// closeCleanly sends the last lines, half-closes the stream and waits for
// the gateway to end it: a clean end means it stored every line sent.
func (a *simAgent) closeCleanly(stream agentv1.AgentGateway_ConnectClient, recvErr <-chan error) (bool, error) {
	if err := a.sendLines(stream); err != nil {
		return false, err
	}
	if err := agent.HalfClose(stream, recvErr, closeTimeout); err != nil {
		return false, err
	}
	a.confirmed = a.sent
	return true, nil
}

// sendLines sends every line made and not yet sent on this stream.
func (a *simAgent) sendLines(stream agentv1.AgentGateway_ConnectClient) error {
	made := a.f.due(time.Now())
	for a.sent < made {
		n := min(made-a.sent, logBatchLines)
		lines := make([]*agentv1.LogLine, 0, n)
		now := timestamppb.Now()
		for seq := a.sent + 1; seq <= a.sent+n; seq++ {
			lines = append(lines, &agentv1.LogLine{Seq: seq, Time: now, Source: "node", Text: lineText(seq)})
		}
		if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Logs{Logs: &agentv1.LogBatch{Lines: lines}}}); err != nil {
			return err
		}
		a.sent += n
		if a.sent > a.highest.Load() {
			a.highest.Store(a.sent)
		}
	}
	return nil
}

func (a *simAgent) heartbeat(stream agentv1.AgentGateway_ConnectClient) error {
	a.f.heartbeats.Add(1)
	return stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{
		Time: timestamppb.Now(), DiskUsedBytes: 1 << 20, DiskTotalBytes: 1 << 30, AgentVersion: version, NodeUrl: a.nodeURL}}})
}

func (a *simAgent) progress(stream agentv1.AgentGateway_ConnectClient, cmd string, step vocab.Step, status vocab.Progress, msg string) error {
	return stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Progress{Progress: &agentv1.Progress{
		CommandId: cmd, Step: string(step), Status: string(status), Message: msg}}})
}

// command answers the provisioner: a bootstrap "installs" and "starts" the
// node software at once and reports done with a node URL (then a heartbeat
// carries the URL), so the instance reaches running; a stop is done at
// once. Commands are idempotent per id, as the agent's.
func (a *simAgent) command(stream agentv1.AgentGateway_ConnectClient, c *agentv1.Command) error {
	var steps []vocab.Step
	switch c.GetAction().(type) {
	case *agentv1.Command_Bootstrap:
		if c.GetId() != a.completed {
			steps = []vocab.Step{vocab.StepInstalling, vocab.StepStarting}
		}
		a.nodeURL = "http://127.0.0.1/agentsim/" + a.id
	case *agentv1.Command_StopNode:
		a.nodeURL = ""
	}
	for _, s := range steps {
		if err := a.progress(stream, c.GetId(), s, vocab.ProgressStarted, ""); err != nil {
			return err
		}
		if err := a.progress(stream, c.GetId(), s, vocab.ProgressSucceeded, a.nodeURL); err != nil {
			return err
		}
	}
	a.completed = c.GetId()
	if err := a.progress(stream, c.GetId(), vocab.StepDone, vocab.ProgressSucceeded, a.nodeURL); err != nil {
		return err
	}
	return a.heartbeat(stream)
}
