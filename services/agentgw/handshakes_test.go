package agentgw

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// writeOnly stands for a socket: writes succeed.
type writeOnly struct{ net.Conn }

func (writeOnly) Write(p []byte) (int, error) { return len(p), nil }

// TestHandshakesTakeTurnsBetweenHelloAndAnswer: at most cap(slots)
// handshakes hold a turn at once, from the hello (acquire) to the gateway's
// answer (its first write); the others wait, and each gets its turn. The
// client's side after the answer holds none: the turns come back while
// every handshake still waits for its client.
func TestHandshakesTakeTurnsBetweenHelloAndAnswer(t *testing.T) {
	t.Parallel()
	slots := make(chan struct{}, 4)
	var computing, most, answered atomic.Int32
	release, finish := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			c := &handshakeConn{Conn: writeOnly{}, slots: slots, wait: time.Minute}
			defer c.release()
			if err := c.acquire(); err != nil {
				t.Error(err)
				return
			}
			n := computing.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-release
			computing.Add(-1)
			_, _ = c.Write([]byte("server hello")) // gives the turn back
			answered.Add(1)
			<-finish // the client's side, which holds no turn
		})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				close(finish)
				t.Fatalf("%s: %d computing, %d answered, %d turns held", what, computing.Load(), answered.Load(), len(slots))
			}
		}
	}
	waitFor("4 handshakes computing", func() bool { return computing.Load() == 4 })
	time.Sleep(50 * time.Millisecond) // room for a fifth, if the bound let one through
	if n := computing.Load(); n != 4 {
		t.Fatalf("%d handshakes computing, want 4", n)
	}
	close(release)
	waitFor("every handshake answered while its client is still at it", func() bool { return answered.Load() == 12 })
	if len(slots) != 0 {
		t.Fatalf("%d turns held by handshakes that answered", len(slots))
	}
	close(finish)
	wg.Wait()
	if m := most.Load(); m != 4 {
		t.Fatalf("at most %d handshakes at once, want 4", m)
	}
}

// TestAHandshakeThatWaitsTooLongForItsTurnIsRefused: with every turn held
// for longer than a handshake may wait, it is refused (and the agent comes
// back after its backoff) rather than waiting on.
func TestAHandshakeThatWaitsTooLongForItsTurnIsRefused(t *testing.T) {
	t.Parallel()
	if handshakeWait != 10*time.Second || serverTLS(&tls.Config{}).(boundedHandshakes).wait != handshakeWait {
		t.Fatalf("the gateway's handshakes wait %s for a turn, want 10 s", serverTLS(&tls.Config{}).(boundedHandshakes).wait)
	}
	slots := make(chan struct{}, 1)
	slots <- struct{}{} // held by another handshake
	c := &handshakeConn{Conn: writeOnly{}, slots: slots, wait: 20 * time.Millisecond}
	if err := c.acquire(); !errors.Is(err, errBusy) {
		t.Fatalf("waiting for a turn that does not come: %v, want %v", err, errBusy)
	}
	<-slots
	if err := c.acquire(); err != nil {
		t.Fatalf("a free turn: %v", err)
	}
	c.release()
	if len(slots) != 0 {
		t.Fatal("the turn was not given back")
	}

	// Through the credentials, the refusal fails the handshake and is
	// counted as busy.
	busy := testutil.ToFloat64(metrics.handshakes.WithLabelValues("busy"))
	slots <- struct{}{}
	creds := serverTLS(&tls.Config{}).(boundedHandshakes)
	creds.slots, creds.wait = slots, 20*time.Millisecond
	server, client := net.Pipe()
	defer client.Close()
	go func() { _ = tls.Client(client, &tls.Config{InsecureSkipVerify: true}).Handshake() }()
	if _, _, err := creds.ServerHandshake(server); !errors.Is(err, errBusy) {
		t.Fatalf("a handshake without a turn: %v, want %v", err, errBusy)
	}
	if got := testutil.ToFloat64(metrics.handshakes.WithLabelValues("busy")); got < busy+1 {
		t.Errorf("flotilla_agentgw_handshakes_total{result=busy} %v, want at least %v", got, busy+1)
	}
}

// TestTLSHandshakesThroughTheBoundAllComplete: more real handshakes at once
// than the bound all complete, a connection that never says hello holds no
// turn meanwhile, and every turn is given back.
func TestTLSHandshakesThroughTheBoundAllComplete(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"agentgw"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	creds := serverTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}).Clone()
	slots := creds.(boundedHandshakes).slots
	if cap(slots) != maxHandshakes {
		t.Fatalf("%d handshakes at once, want %d", cap(slots), maxHandshakes)
	}
	silentServer, silentClient := net.Pipe()
	defer silentClient.Close()
	go func() { _, _, _ = creds.ServerHandshake(silentServer) }()

	ok, timed, turns := testutil.ToFloat64(metrics.handshakes.WithLabelValues("ok")), sampleCount(metrics.handshakeTime), sampleCount(metrics.handshakeTurns)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range maxHandshakes + 44 {
		server, client := net.Pipe()
		wg.Go(func() {
			defer server.Close()
			if _, _, err := creds.ServerHandshake(server); err != nil {
				failed.Add(1)
			}
		})
		wg.Go(func() {
			defer client.Close()
			c := tls.Client(client, &tls.Config{ServerName: "agentgw", InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			if err := c.Handshake(); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d sides of %d handshakes failed", n, maxHandshakes+44)
	}
	if len(slots) != 0 {
		t.Fatalf("%d turns still held after every handshake ended (one connection silent)", len(slots))
	}
	// Counted in the metrics (other tests' handshakes may add to them).
	const n = maxHandshakes + 44
	if got := testutil.ToFloat64(metrics.handshakes.WithLabelValues("ok")); got < ok+n {
		t.Errorf("flotilla_agentgw_handshakes_total{result=ok} %v, want at least %v", got, ok+n)
	}
	if got := sampleCount(metrics.handshakeTime); got < timed+n {
		t.Errorf("flotilla_agentgw_handshake_seconds counted %d, want at least %d", got, timed+n)
	}
	if got := sampleCount(metrics.handshakeTurns); got < turns+n {
		t.Errorf("flotilla_agentgw_handshake_turn_wait_seconds counted %d, want at least %d", got, turns+n)
	}
}
