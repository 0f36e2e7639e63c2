package agentgw

import (
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
)

// serverTLS returns the transport credentials agents meet: the handshake
// runs on cfg, whose session ticket keys change as the CA rolls them
// (credentials.NewTLS would work on a copy of cfg, and add "h2" to the
// copy's NextProtos: cfg must name it), and takes its turn among the
// gateway's handshakes.
func serverTLS(cfg *tls.Config) credentials.TransportCredentials {
	return boundedHandshakes{
		TransportCredentials: credentials.NewTLS(&tls.Config{
			MinVersion: cfg.MinVersion,
			GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				if c, ok := hello.Conn.(*handshakeConn); ok {
					if err := c.acquire(); err != nil {
						return nil, err
					}
				}
				return cfg, nil
			},
		}),
		slots: make(chan struct{}, maxHandshakes),
		wait:  handshakeWait,
	}
}

// Handshakes in turn. After a restart thousands of agents come back within
// a second or two: run all at once, their handshakes share the CPU and every
// one is slow — none finishes for seconds, many outlast the agents' patience
// and come back later for another — while taken in turn each takes
// milliseconds and the gateway's throughput is the same. So a gateway
// computes at most maxHandshakes handshakes at once, and the others wait,
// in order, for up to handshakeWait (then they are refused, and the agents
// come back after their backoff). A handshake holds its turn from its
// ClientHello until the gateway has written its answer (ServerHello to
// Finished): the key exchange and the signature. Nothing a client does or
// fails to do holds a turn: a connection that never says hello, or never
// finishes its side, holds none.
const (
	maxHandshakes = 256
	handshakeWait = 10 * time.Second
)

// errBusy refuses a handshake that waited its longest for its turn.
var errBusy = errors.New("the agent gateway is busy with other agents' handshakes: try again shortly")

// boundedHandshakes gives each server handshake a handshakeConn, through
// which it takes its turn among slots, waiting up to wait.
type boundedHandshakes struct {
	credentials.TransportCredentials
	slots chan struct{}
	wait  time.Duration
}

func (b boundedHandshakes) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	start := time.Now()
	hc := &handshakeConn{Conn: c, slots: b.slots, wait: b.wait}
	defer hc.release()
	conn, info, err := b.TransportCredentials.ServerHandshake(hc)
	metrics.handshakeTime.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		metrics.handshakes.WithLabelValues("ok").Inc()
	case errors.Is(err, errBusy):
		metrics.handshakes.WithLabelValues("busy").Inc()
	default:
		metrics.handshakes.WithLabelValues("failed").Inc()
	}
	return conn, info, err
}

func (b boundedHandshakes) Clone() credentials.TransportCredentials {
	return boundedHandshakes{TransportCredentials: b.TransportCredentials.Clone(), slots: b.slots, wait: b.wait}
}

// handshakeConn is a connection whose handshake takes a turn (acquire, once
// the ClientHello is read: crypto/tls asks GetConfigForClient once per
// handshake) and gives it back with its first write (the gateway's answer)
// or when the handshake ends.
type handshakeConn struct {
	net.Conn
	slots chan struct{}
	wait  time.Duration
	held  atomic.Bool
}

func (c *handshakeConn) acquire() error {
	start := time.Now()
	t := time.NewTimer(c.wait)
	defer t.Stop()
	defer func() { metrics.handshakeTurns.Observe(time.Since(start).Seconds()) }()
	select {
	case c.slots <- struct{}{}:
		c.held.Store(true)
		return nil
	case <-t.C:
		return errBusy
	}
}

func (c *handshakeConn) release() {
	if c.held.CompareAndSwap(true, false) {
		<-c.slots
	}
}

func (c *handshakeConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.release()
	return n, err
}

// SyscallConn keeps the connection's socket reachable to gRPC, as the
// connection it wraps has it.
func (c *handshakeConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("agentgw: not a socket")
}
