package natsx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"flotilla.dev/flotilla/libs/natsx"
	"flotilla.dev/flotilla/libs/testkit"
)

// held serves a new subject with a responder that says when a request
// came and answers it only when the test says so.
func held(t *testing.T) (subject string, came <-chan struct{}, answer chan<- struct{}) {
	t.Helper()
	subject = unique("test.held.")
	c, a := make(chan struct{}, 1), make(chan struct{})
	addService(t, connect(t), subject, micro.HandlerFunc(func(req micro.Request) {
		c <- struct{}{}
		select {
		case <-a:
			_ = req.Respond([]byte{})
		case <-t.Context().Done():
		}
	}))
	return subject, c, a
}

// inBackground runs send with a timeout well past the grace a lost
// reply is given, and hands back its error.
func inBackground(t *testing.T, send func(context.Context) error) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		done <- send(ctx)
	}()
	return done
}

// request sends a request to subject on nc in the background.
func request(t *testing.T, nc *nats.Conn, subject string) <-chan error {
	return inBackground(t, func(ctx context.Context) error {
		return natsx.Request(ctx, nc, subject, wrapperspb.String("x"), nil)
	})
}

// interrupted is a request (sent by send, in the background) its service
// has received when the requester's connection drops (it comes back by
// itself after its reconnect wait, 1 s and a jitter); answer has the
// service reply.
func interrupted(t *testing.T, send func(*testing.T, *nats.Conn, string) <-chan error) (nc *nats.Conn, done <-chan error, answer chan<- struct{}) {
	t.Helper()
	subject, came, answer := held(t)
	nc = connect(t)
	done = send(t, nc, subject)
	<-came
	testkit.DropConnection(t, srv, nc)
	return nc, done, answer
}

// A request whose reply the service sent while the requester's connection
// was down fails as ErrConnectionLost soon after the connection is back,
// rather than waiting out its 30 s timeout for a reply that cannot come.
func TestARequestWhoseReplyWasLostFailsOnceTheConnectionIsBack(t *testing.T) {
	t.Parallel()
	nc, done, answer := interrupted(t, request)
	close(answer) // to no one: the requester is away
	start := time.Now()
	err := <-done
	if !errors.Is(err, natsx.ErrConnectionLost) {
		t.Fatalf("Request error = %v, want ErrConnectionLost", err)
	}
	if nc.Status() != nats.CONNECTED || nc.Stats().Reconnects != 1 {
		t.Fatalf("the request failed with the connection %v after %d reconnects, want it back once", nc.Status(), nc.Stats().Reconnects)
	}
	t.Logf("failed %v after the reply was lost", time.Since(start).Round(time.Millisecond))
}

// A request sent before the connection was lost still gets a reply the
// service sends once the requester is back (within the grace).
func TestARequestAnsweredAfterItsConnectionCameBackGetsTheReply(t *testing.T) {
	t.Parallel()
	nc, done, answer := interrupted(t, request)
	testkit.WaitFor(t, 10*time.Second, "the client to reconnect", func() bool { return nc.Status() == nats.CONNECTED })
	// The server has the client's subscriptions again once it answers a ping.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	close(answer)
	if err := <-done; err != nil {
		t.Fatalf("Request error = %v, want the reply sent after the reconnect", err)
	}
}

// A request made while the connection is down waits in the client and is
// sent when the connection is back: the grace of the requests the loss
// interrupted does not apply to it, however long its service takes.
func TestARequestMadeWhileDisconnectedIsNotCutShort(t *testing.T) {
	t.Parallel()
	subject, came, answer := held(t)
	nc := connect(t)
	testkit.DropConnection(t, srv, nc)
	done := request(t, nc, subject)
	<-came // sent once the connection is back
	time.Sleep(natsx.LostReplyGrace + 500*time.Millisecond)
	close(answer)
	if err := <-done; err != nil {
		t.Fatalf("Request error = %v, want the reply", err)
	}
}

// A JetStream publish run through Bounded whose acknowledgement was lost
// with the connection fails as ErrConnectionLost once the connection is
// back, rather than at its timeout. (The "stream" here is a responder
// that holds the publish, so the acknowledgement comes when the test says.)
func TestAPublishWhoseAckWasLostFailsOnceTheConnectionIsBack(t *testing.T) {
	t.Parallel()
	publish := func(t *testing.T, nc *nats.Conn, subject string) <-chan error {
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return inBackground(t, func(ctx context.Context) error {
			return natsx.Bounded(ctx, nc, func(ctx context.Context) error {
				_, err := js.Publish(ctx, subject, []byte("audit"))
				return err
			})
		})
	}
	_, done, answer := interrupted(t, publish)
	close(answer)
	if err := <-done; !errors.Is(err, natsx.ErrConnectionLost) {
		t.Fatalf("publish error = %v, want ErrConnectionLost", err)
	}
}
