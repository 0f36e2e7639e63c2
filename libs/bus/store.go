package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/libs/natsx"
)

// StoreTry bounds one try of Store: how long it waits for JetStream to
// acknowledge one publish before it publishes again.
const StoreTry = 3 * time.Second

// Store publishes m into JetStream and waits until it is stored. While
// JetStream does not answer — a stream electing its leader (4 to 9 s
// after its leader's server is lost), that server restarting — or the bus
// connection was lost with m in flight, it publishes m again, each try
// bounded by StoreTry and the tries further apart each time (up to 1 s),
// until ctx ends. m must carry a message id (HeaderMsgID): a try that was
// stored but whose acknowledgement was lost is then dropped as a copy by
// the stream (its duplicate window, DuplicateWindow).
func Store(ctx context.Context, js jetstream.JetStream, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if m.Header.Get(HeaderMsgID) == "" {
		return nil, fmt.Errorf("store on %s: the message has no %s to publish it again by", m.Subject, HeaderMsgID)
	}
	wait := 50 * time.Millisecond
	for {
		var ack *jetstream.PubAck
		err := natsx.Bounded(ctx, js.Conn(), func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, StoreTry)
			defer cancel()
			var err error
			ack, err = js.PublishMsg(ctx, m, opts...)
			return err
		})
		if err == nil || ctx.Err() != nil || !StoreAgain(err) {
			return ack, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// StoreAgain says a publish, asynchronous or not, or a Store that failed
// with err is worth trying again: JetStream did not answer (Unanswered, or
// an asynchronous publish's acknowledgement timed out), or the connection
// was lost or made again with the publish in flight.
func StoreAgain(err error) bool {
	return Unanswered(err) || errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, natsx.ErrConnectionLost) || errors.Is(err, nats.ErrDisconnected)
}
