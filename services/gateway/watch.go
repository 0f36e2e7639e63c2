package gateway

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
)

// watchPending is how many messages a watch may hold unhandled before
// NATS drops the next ones (and the watch resets).
const watchPending = 65536

// watchBus subscribes on to subjects (plain subscriptions, declared in
// api/endpoints.Watches) until ctx ends. What the gateway keeps from them
// is only as good as the messages it saw, so reset is called whenever some
// may have been missed: the connection was lost, or a subscription fell
// behind and dropped messages (looked at every second). tidy, if not nil,
// is called every second too.
func watchBus(ctx context.Context, nc *nats.Conn, subjects []string, on nats.MsgHandler, reset, tidy func()) error {
	var subs []*nats.Subscription
	unsubscribe := func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}
	for _, subject := range subjects {
		sub, err := nc.Subscribe(subject, on)
		if err == nil {
			subs = append(subs, sub)
			err = sub.SetPendingLimits(watchPending, -1)
		}
		if err != nil {
			unsubscribe()
			return err
		}
	}
	status := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CONNECTED)
	go func() {
		defer nc.RemoveStatusListener(status)
		defer unsubscribe()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		dropped := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-status:
				reset()
			case <-tick.C:
				n := 0
				for _, s := range subs {
					d, _ := s.Dropped()
					n += d
				}
				if n != dropped {
					dropped = n
					reset()
				}
				if tidy != nil {
					tidy()
				}
			}
		}
	}()
	return nc.Flush()
}
