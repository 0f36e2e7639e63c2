package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// Stream limits.
const (
	// logBatchLines and logBatchBytes bound one LogBatch, well under the
	// gateway's 4 MiB message limit.
	logBatchLines = 500
	logBatchBytes = 1 << 20
	// connectTimeout bounds opening a stream and sending hello.
	connectTimeout = 15 * time.Second
	// closeTimeout bounds a clean close: the gateway handles what it has
	// been sent, then ends the stream.
	closeTimeout = 5 * time.Second
)

// sessionEnd says how a stream ended.
type sessionEnd int

const (
	endBroken  sessionEnd = iota // the stream or the connection failed
	endCycled                    // closed cleanly to present a renewed certificate
	endStopped                   // closed cleanly because the agent is stopping
)

// sessions keeps a stream to the gateway until stopping is closed,
// reconnecting with jittered exponential backoff (reset after a stream that
// stayed up for a heartbeat interval).
func (a *agent) sessions(ctx context.Context, stopping <-chan struct{}) error {
	bo := NewBackoff()
	for {
		select {
		case <-stopping:
			return nil
		default:
		}
		if h := a.cert.Load(); !time.Now().Before(h.tls.Leaf.NotAfter) {
			a.logf(ctx, "the agent certificate expired at %s; joining again", h.tls.Leaf.NotAfter.Format(time.RFC3339))
			if err := a.ensureCert(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("the agent certificate expired and the agent cannot join again: %w", err)
			}
		}
		start := time.Now()
		end, err := a.session(stopping)
		a.streamEnded()
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
			// Perhaps for the certificate a resumed session carried: the
			// next stream makes a new session.
			a.tlsSessions.Forget()
		}
		switch end {
		case endStopped:
			return nil
		case endCycled:
			bo.Reset()
			continue
		}
		if time.Since(start) >= a.cfg.HeartbeatInterval {
			bo.Reset()
		}
		wait := bo.Next()
		a.logf(ctx, "the stream to the agent gateway ended (reconnecting in %s): %v", wait.Round(time.Millisecond), err)
		select {
		case <-stopping:
			return nil
		case <-time.After(wait):
		}
	}
}

// session runs one stream: hello, then heartbeats, logs, progress and
// requests out, commands and answers in.
func (a *agent) session(stopping <-chan struct{}) (sessionEnd, error) {
	select {
	case <-a.cycle: // this stream presents the renewed certificate already
	default:
	}
	conn, err := a.dial()
	if err != nil {
		return endBroken, err
	}
	a.logs.Rewind() // every line not yet stored goes again
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Opening the stream and saying hello must not hang, nor outlast a stop.
	opened := make(chan struct{})
	go func() {
		t := time.NewTimer(connectTimeout)
		defer t.Stop()
		select {
		case <-opened:
		case <-t.C:
			cancel()
		case <-stopping:
			cancel()
		}
	}()
	stream, err := agentv1.NewAgentGatewayClient(conn).Connect(ctx)
	if err == nil {
		err = stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: &agentv1.Hello{
			AgentVersion:       a.cfg.Version,
			VmId:               a.cfg.VMID,
			CompletedCommandId: a.state.Get().CompletedCommandID,
			Features: []string{string(vocab.AgentFeatureRelease), string(vocab.AgentFeatureUpgrade),
				string(vocab.AgentFeatureRefreshConfiguration)},
		}}})
	}
	close(opened)
	if err != nil {
		return endBroken, fmt.Errorf("open the stream: %w", err)
	}

	recvErr := Receive(stream, func(m *agentv1.GatewayMessage) { a.received(ctx, m) })

	hb := time.NewTicker(a.cfg.HeartbeatInterval)
	defer hb.Stop()
	var mark uint64 // what had been sent at the previous heartbeat
	if err := stream.Send(a.heartbeat()); err != nil {
		return endBroken, a.brokenWith(err, recvErr)
	}
	a.logf(ctx, "connected to the agent gateway %s", a.cfg.GatewayAddr)
	for {
		if err := a.flush(stream); err != nil {
			return endBroken, a.brokenWith(err, recvErr)
		}
		select {
		case <-a.out.Notify():
		case <-a.logs.Notify():
		case <-hb.C:
			select {
			case err := <-recvErr:
				return endBroken, err
			default:
			}
			// A gateway that does not acknowledge lines (an older one):
			// still healthy a whole interval after they were written, it
			// has those lines.
			if !a.logs.Acking() {
				a.logs.Confirm(mark)
			}
			mark = a.logs.Sent()
			if err := stream.Send(a.heartbeat()); err != nil {
				return endBroken, a.brokenWith(err, recvErr)
			}
		case err := <-recvErr:
			return endBroken, err
		case <-a.cycle:
			return a.closeCleanly(stream, recvErr, endCycled)
		case <-stopping:
			return a.closeCleanly(stream, recvErr, endStopped)
		}
	}
}

// closeCleanly sends what is waiting, half-closes the stream and waits for
// the gateway to end it (HalfClose): a clean end means the gateway handled
// every message (a gateway that acknowledges lines sent its last LogAck
// before ending the stream; for an older one every log line sent is
// confirmed).
func (a *agent) closeCleanly(stream agentv1.AgentGateway_ConnectClient, recvErr <-chan error, end sessionEnd) (sessionEnd, error) {
	if err := a.flush(stream); err != nil {
		return end, err
	}
	if err := HalfClose(stream, recvErr, closeTimeout); err != nil {
		return end, err
	}
	if !a.logs.Acking() {
		a.logs.Confirm(a.logs.Sent())
	}
	return end, nil
}

// Receive reads stream in a goroutine of its own until it ends, handing
// each message to handle, and returns the channel that gets the error the
// stream ends with (io.EOF: the gateway ended it cleanly).
func Receive(stream agentv1.AgentGateway_ConnectClient, handle func(*agentv1.GatewayMessage)) <-chan error {
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			handle(m)
		}
	}()
	return recvErr
}

// HalfClose tells the gateway the agent sends nothing more on stream and
// waits, at most timeout, for the gateway to end it; recvErr gets what the
// stream's receiver ends with. Nil means the gateway ended the stream
// cleanly, having handled every message sent on it.
func HalfClose(stream agentv1.AgentGateway_ConnectClient, recvErr <-chan error, timeout time.Duration) error {
	if err := stream.CloseSend(); err != nil {
		return err
	}
	select {
	case err := <-recvErr:
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	case <-time.After(timeout):
		return errors.New("the gateway did not close the stream in time")
	}
}

// brokenWith returns the reason a stream broke: a failed Send reports only
// io.EOF, and the status comes from Recv.
func (a *agent) brokenWith(sendErr error, recvErr <-chan error) error {
	if errors.Is(sendErr, io.EOF) {
		select {
		case err := <-recvErr:
			return err
		case <-time.After(time.Second):
		}
	}
	return sendErr
}

// flush sends every waiting outbox message, then every unsent log line.
func (a *agent) flush(stream agentv1.AgentGateway_ConnectClient) error {
	for m := a.out.Pop(); m != nil; m = a.out.Pop() {
		if err := stream.Send(m); err != nil {
			a.out.PushFront(m)
			return err
		}
	}
	for {
		lines := a.logs.Next(logBatchLines, logBatchBytes)
		if len(lines) == 0 {
			return nil
		}
		if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Logs{Logs: &agentv1.LogBatch{Lines: lines}}}); err != nil {
			return err
		}
		a.logs.MarkSent(lines[len(lines)-1].GetSeq())
	}
}

// received acts on a message from the gateway.
func (a *agent) received(ctx context.Context, m *agentv1.GatewayMessage) {
	switch b := m.GetBody().(type) {
	case *agentv1.GatewayMessage_Command:
		if r := b.Command.GetRelease(); r != nil {
			a.release(ctx, r.GetReason())
			return
		}
		if !a.cmds.Push(b.Command) {
			a.logf(ctx, "command %s is queued, running or has run already; this delivery is ignored", b.Command.GetId())
		}
	case *agentv1.GatewayMessage_SecretResponse:
		a.answer(b.SecretResponse.GetRequestId(), m)
	case *agentv1.GatewayMessage_ServerCertResponse:
		a.answer(b.ServerCertResponse.GetRequestId(), m)
	case *agentv1.GatewayMessage_AcmeResponse:
		a.answer(b.AcmeResponse.GetRequestId(), m)
	case *agentv1.GatewayMessage_LogAck:
		a.logs.Ack(b.LogAck.GetSeq())
	}
}

// heartbeat is the agent's current health.
func (a *agent) heartbeat() *agentv1.AgentMessage {
	hb := &agentv1.Heartbeat{
		Time:           timestamppb.Now(),
		DiskUsedBytes:  a.diskUsed.Load(),
		DiskTotalBytes: int64(a.cfg.DataDiskGB) << 30,
		Load1:          math.Float64frombits(a.load1.Load()),
		AgentVersion:   a.cfg.Version,
		NodeUrl:        a.node.URL(),
	}
	if ip := a.privateIP.Load(); ip != nil {
		hb.PrivateIp = *ip
	}
	if end := a.nodeCertEnd(); !end.IsZero() {
		hb.NodeCertificateNotAfter = timestamppb.New(end)
	}
	return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: hb}}
}
